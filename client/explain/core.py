"""``explain`` and ``explain_async``: one prediction's attributions, through any v2 server.

Both ask the server for the model's metadata (and, where it answers
ModelConfig, its max_batch_size), build the features of the explained input
(:mod:`.features`), score the unperturbed input once (which also picks the
target class where the output has several values), and run the method
(:mod:`.methods`) on a :class:`~.transport.Predictor`. They differ only in how
requests go out: threads for :class:`Client`, coroutines on the event loop for
:class:`AsyncClient` (the estimators, blocking code, run in a worker thread
meanwhile, so the loop stays free).

Invariants: no request carries more than ``max_rows`` rows (the model's
max_batch_size where the server says it, else ``batch_size`` or 64); at most
``concurrency`` requests are in flight; ``inferences`` counts every row sent,
the reference row included; ``seconds`` runs from the first call to the
server to the last attribution (importing shap or lime comes before it). A
failed call raises the server's error (:class:`InferenceServerError`) unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from onnxserve.client.errors import UnimplementedError
from onnxserve.client.explain.features import FeatureKind, FeatureSpace, TokenCodec
from onnxserve.client.explain.methods import METHODS, Method, import_method, run_method
from onnxserve.client.explain.result import Attribution, Explanation
from onnxserve.client.explain.transport import (
    LoopSender,
    Predictor,
    Sender,
    Stopwatch,
    ThreadSender,
)

if TYPE_CHECKING:
    from onnxserve.client.aio import AsyncClient
    from onnxserve.client.sync import Client
    from onnxserve.client.types import ModelMetadata

__all__ = ["DEFAULT_MAX_ROWS", "explain", "explain_async"]

#: Rows per request where the server does not say the model's max_batch_size (no ModelConfig).
DEFAULT_MAX_ROWS = 64
KindOption = Literal["auto"] | FeatureKind


@dataclass(frozen=True)
class _Options:
    """explain()'s arguments; the defaults here are explain()'s and explain_async()'s."""

    model: str
    inputs: Mapping[str, npt.ArrayLike]
    text: str | None = None
    input: str | None = None
    kind: KindOption = "auto"
    tokenizer: TokenCodec | None = None
    output: str | None = None
    target: int | None = None
    method: str = "occlusion"
    samples: int = 500
    seed: int = 0
    patch: int = 1
    baseline: float | Sequence[float] = 0.0
    feature_names: Sequence[str] | None = None
    pad_id: int = 0
    batch_size: int | None = None
    concurrency: int = 4
    version: str | int | None = None
    timeout: float | None = None

    def check(self) -> None:
        if self.method not in METHODS:
            methods = ", ".join(METHODS)
            raise ValueError(f"unknown method {self.method!r}; the methods are {methods}")
        if self.samples < 1:
            raise ValueError("samples must be 1 or more")
        if self.concurrency < 1:
            raise ValueError("concurrency must be 1 or more")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be 1 or more")
        if self.target is not None and self.target < 0:
            raise ValueError("target must be 0 or more")


@dataclass(frozen=True)
class _Plan:
    space: FeatureSpace
    input: str
    output: str
    fixed: dict[str, np.ndarray]
    batched: bool
    max_rows: int


def _as_declared(name: str, value: npt.ArrayLike, datatype: str) -> np.ndarray:
    from onnxserve.client.cli import to_declared

    if datatype == "BYTES":
        return np.asarray(value, dtype=object)
    return to_declared(name, np.asarray(value), datatype)


def _with_batch(name: str, value: np.ndarray, shape: tuple[int, ...], batched: bool) -> np.ndarray:
    """The value as one row of a batch (batched models) or as it is."""
    if not batched:
        return value
    if value.ndim == len(shape) - 1:
        value = value[np.newaxis, ...]
    if value.ndim == 0 or value.shape[0] != 1:
        raise ValueError(
            f"input '{name}': explain one row at a time (a batch of 1); "
            f"this value has shape {list(value.shape)}"
        )
    return value[0, ...]  # an array even where the row is one element


def _chosen_input(metadata: ModelMetadata, options: _Options) -> str:
    names = [t.name for t in metadata.inputs]
    if options.input is not None:
        if options.input not in names:
            raise ValueError(
                f"model '{metadata.name}' has no input '{options.input}'; its inputs are "
                + ", ".join(names)
            )
        return options.input
    if len(names) == 1:
        return names[0]
    missing = [n for n in names if n not in options.inputs]
    if options.text is not None and len(missing) == 1:
        return missing[0]
    raise ValueError(
        f"model '{metadata.name}' has inputs {', '.join(names)}: name the one to explain"
    )


def _space(kind: KindOption, row: np.ndarray, datatype: str, options: _Options) -> FeatureSpace:
    if kind == "auto":
        if datatype == "BYTES":
            kind = "text"
        elif row.dtype.kind in "iub":
            kind = "tokens"
        elif row.ndim == 1:
            kind = "tabular"
        elif row.ndim in (2, 3):
            kind = "image"
        else:
            raise ValueError(
                f"cannot tell what the {row.ndim}-dimensional rows of this input are: "
                "give the kind (text, tokens, image or tabular)"
            )
    if kind == "text":
        return FeatureSpace.of_text(row)
    if kind == "tokens":
        return FeatureSpace.of_tokens(row, tokenizer=options.tokenizer, pad_id=options.pad_id)
    if kind == "image":
        return FeatureSpace.of_image(row, patch=options.patch, baseline=float(options.baseline))  # type: ignore[arg-type]
    return FeatureSpace.of_columns(row, baseline=options.baseline, names=options.feature_names)


def _explained_value(name: str, datatype: str, options: _Options) -> Any:
    if name in options.inputs:
        if options.text is not None:
            raise ValueError(f"give input '{name}' or text, not both")
        return options.inputs[name]
    if options.text is None:
        raise ValueError(f"give a value for input '{name}' (or text for a text or token input)")
    if datatype == "BYTES":
        return np.array([options.text], dtype=object)
    if options.tokenizer is None:
        raise ValueError(
            f"input '{name}' takes {datatype} token ids: give the ids as an input, or a tokenizer "
            "(encode and decode) that turns the text into ids"
        )
    return options.tokenizer.encode([options.text])


def _plan(metadata: ModelMetadata, max_batch_size: int | None, options: _Options) -> _Plan:
    name = _chosen_input(metadata, options)
    declared = {t.name: t for t in metadata.inputs}
    unknown = sorted(set(options.inputs) - set(declared))
    if unknown:
        raise ValueError(f"model '{metadata.name}' has no input {', '.join(unknown)}")
    tensor = declared[name]
    batched = bool(max_batch_size) if max_batch_size is not None else tensor.shape[:1] == (-1,)
    value = _explained_value(name, tensor.datatype, options)
    if options.text is not None and tensor.datatype == "BYTES":
        # the sentence fills the row's one element, whatever the row's shape
        shape = tuple(1 for _ in tensor.shape[1 if batched else 0 :])
        value = np.asarray(value, dtype=object).reshape((1, *shape) if batched else shape)
    row = _with_batch(name, _as_declared(name, value, tensor.datatype), tensor.shape, batched)
    fixed = {}
    for other in metadata.inputs:
        if other.name == name:
            continue
        if other.name not in options.inputs:
            raise ValueError(f"give a value for input '{other.name}' too (it is held fixed)")
        fixed[other.name] = _with_batch(
            other.name,
            _as_declared(other.name, options.inputs[other.name], other.datatype),
            other.shape,
            batched,
        )
    outputs = [t.name for t in metadata.outputs]
    output = options.output or (outputs[0] if outputs else "")
    if outputs and output not in outputs:
        raise ValueError(
            f"model '{metadata.name}' has no output '{output}'; its outputs are "
            + ", ".join(outputs)
        )
    limit = max_batch_size or DEFAULT_MAX_ROWS
    max_rows = min(options.batch_size or limit, limit) if batched else 1
    return _Plan(
        space=_space(options.kind, row, tensor.datatype, options),
        input=name,
        output=output,
        fixed=fixed,
        batched=batched,
        max_rows=max_rows,
    )


def _run(plan: _Plan, options: _Options, send: Sender, clock: Stopwatch) -> Explanation:
    """The blocking part: the reference row, then the method; in the caller's or a worker thread."""
    predictor = Predictor(
        send=send,
        input_name=plan.input,
        output_name=plan.output,
        max_rows=plan.max_rows,
        batched=plan.batched,
        fixed=plan.fixed,
    )
    space = plan.space
    reference = predictor.outputs(space.rows(np.ones((1, space.size), dtype=bool)))[0]
    if options.target is None:
        predictor.target = int(np.argmax(reference)) if reference.size > 1 else 0
    else:
        predictor.target = options.target
    if predictor.target >= reference.size:
        raise ValueError(
            f"target {predictor.target} is past the {reference.size} values of "
            f"output '{plan.output}'"
        )
    full = float(reference[predictor.target])
    result = run_method(
        options.method,
        space,
        predictor.scores,
        full=full,
        samples=options.samples,
        seed=options.seed,
    )
    sampled = options.method != "occlusion"
    return Explanation(
        model=options.model,
        input=plan.input,
        output=plan.output,
        target=predictor.target,
        kind=space.kind,
        method=options.method,
        score=full,
        base=result.base,
        attributions=tuple(
            Attribution(
                index=i,
                label=space.labels[i],
                position=space.positions[i],
                value=space.values[i],
                attribution=float(result.values[i]),
            )
            for i in range(space.size)
        ),
        inferences=predictor.inferences,
        calls=predictor.calls,
        seconds=clock.seconds(),
        samples=options.samples if sampled else None,
        seed=options.seed if sampled and options.method != "partition-shap" else None,
        max_rows=plan.max_rows,
        concurrency=options.concurrency,
        image=space.row if space.kind == "image" else None,
        segments=space.segments,
    )


def _options(model: str, inputs: Mapping[str, npt.ArrayLike] | None, **kwargs: Any) -> _Options:
    options = _Options(model=model, inputs=dict(inputs or {}), **kwargs)
    options.check()
    return options


def explain(
    client: Client,
    model: str,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    *,
    text: str | None = None,
    input: str | None = None,
    kind: KindOption = "auto",
    tokenizer: TokenCodec | None = None,
    output: str | None = None,
    target: int | None = None,
    method: Method = "occlusion",
    samples: int = 500,
    seed: int = 0,
    patch: int = 1,
    baseline: float | Sequence[float] = 0.0,
    feature_names: Sequence[str] | None = None,
    pad_id: int = 0,
    batch_size: int | None = None,
    concurrency: int = 4,
    version: str | int | None = None,
    timeout: float | None = None,
) -> Explanation:
    """Which elements of one input drove a served model's prediction.

    Args:
        client: a :class:`Client` of any Open Inference Protocol server.
        model: the model's name (``version`` picks a version).
        inputs: arrays by input name, as for :meth:`Client.infer` (a batch of
            one, or one row without the batch dimension); inputs other than the
            explained one are held fixed.
        text: a sentence, for a BYTES (text-in) input, or for a token-id input
            with ``tokenizer`` (whose ``decode`` also labels the tokens).
        input: the input to explain (default: the model's only one).
        kind: ``text`` (words, split on whitespace), ``tokens`` (ids other
            than ``pad_id``), ``image`` (``(H, W[, C])`` rows; patches of
            ``patch`` pixels), ``tabular`` (columns, ``feature_names``), or
            ``auto``: from the datatype and the row's shape.
        output, target: the explained output (default: the first) and the
            index in its flattened row (default: 0 for one value, else the
            class the model predicts).
        method: ``occlusion`` (exact, one inference per feature),
            ``kernel-shap``, ``partition-shap`` (words, tokens) or ``lime``
            (words, tokens, images); the last three need the ``explain`` extra
            and use ``samples`` evaluations, seeded by ``seed``.
        baseline: what an image's removed pixels or a table's removed columns
            become (one number, or one per column).
        batch_size: rows per request (at most the model's max_batch_size).
        concurrency: requests in flight at once.
        timeout: the deadline of each request.

    Returns an :class:`Explanation`. Raises the server's
    :class:`InferenceServerError` when a call fails (unknown model, wrong
    shape), ValueError for arguments that cannot describe the input.

    Example::

        from onnxserve.client import Client
        from onnxserve.client.explain import explain

        with Client("localhost:8001") as client:  # the sentiment example takes sentences
            result = explain(client, "sentiment", text="great food, awful service",
                             method="kernel-shap", samples=500)
        for item in result.ranked()[:5]:
            print(item.label, round(item.attribution, 3))
    """
    options = _options(
        model, inputs, text=text, input=input, kind=kind, tokenizer=tokenizer, output=output,
        target=target, method=method, samples=samples, seed=seed, patch=patch,
        baseline=baseline, feature_names=feature_names, pad_id=pad_id, batch_size=batch_size,
        concurrency=concurrency, version=version, timeout=timeout,
    )  # fmt: skip
    import_method(method)
    clock = Stopwatch()
    metadata = client.model_metadata(model, version, timeout=timeout)
    try:
        max_batch_size: int | None = client.model_config(
            model, version, timeout=timeout
        ).max_batch_size
    except UnimplementedError:
        max_batch_size = None  # a server without ModelConfig (KServe's)
    plan = _plan(metadata, max_batch_size, options)
    sender = ThreadSender(client, model, plan.output, concurrency, version, timeout)
    return _run(plan, options, sender, clock)


async def explain_async(
    client: AsyncClient,
    model: str,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    **kwargs: Any,
) -> Explanation:
    """:func:`explain` for an :class:`AsyncClient`: the same arguments, awaited.

    Requests go out as coroutines on the running loop (at most
    ``concurrency`` at a time); the estimator runs in a worker thread, so
    other tasks keep running meanwhile.
    """
    options = _options(model, inputs, **kwargs)
    await asyncio.to_thread(import_method, options.method)
    clock = Stopwatch()
    version, timeout = options.version, options.timeout
    metadata = await client.model_metadata(model, version, timeout=timeout)
    try:
        config = await client.model_config(model, version, timeout=timeout)
        max_batch_size: int | None = config.max_batch_size
    except UnimplementedError:
        max_batch_size = None
    plan = _plan(metadata, max_batch_size, options)
    sender = LoopSender(
        client, asyncio.get_running_loop(), model, plan.output, options.concurrency, version,
        timeout,
    )  # fmt: skip
    return await asyncio.to_thread(_run, plan, options, sender, clock)
