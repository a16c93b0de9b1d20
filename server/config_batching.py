"""config.pbtxt's ``dynamic_batching``: read and checked once, at load, with Triton's meaning.

The batcher never looks at the ModelConfig itself: it gets a
:class:`BatchingConfig` whose values are already valid (times in
nanoseconds, one :class:`QueuePolicy` per priority level, padding sizes
sorted), so a config Triton would refuse fails the model's load here with
the reason, never a request later.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxserve.layout import ALLOWED_BATCH_SIZES_PARAMETER
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.server.errors import ConfigError


@dataclass(frozen=True)
class QueuePolicy:
    """One priority level's ModelQueuePolicy, times in nanoseconds (0: none)."""

    timeout_ns: int
    delay_on_timeout: bool
    allow_timeout_override: bool
    max_queue_size: int

    @classmethod
    def from_proto(cls, policy: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(
            timeout_ns=policy.default_timeout_microseconds * 1000,
            delay_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
            allow_timeout_override=policy.allow_timeout_override,
            max_queue_size=policy.max_queue_size,
        )

    def timeout_of(self, request_timeout_us: int) -> int:
        """The request's queue timeout in ns (0: none), as Triton decides it.

        The request's ``timeout`` parameter counts only when the policy allows
        an override, and then it may shorten the default but never lengthen it
        (a default of 0 means no timeout, so any override shortens it).
        """
        timeout = self.timeout_ns
        if self.allow_timeout_override and request_timeout_us > 0:
            override = request_timeout_us * 1000
            if timeout == 0 or override < timeout:
                timeout = override
        return timeout


@dataclass(frozen=True)
class BatchingConfig:
    """What the batcher takes from a completed ModelConfig, checked once at load."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_ns: int
    preserve_ordering: bool
    priority_levels: int
    default_priority_level: int
    policies: tuple[QueuePolicy, ...]  # index 0 is priority level 1
    allowed_batch_sizes: tuple[int, ...]

    @classmethod
    def from_model_config(cls, config: mc.ModelConfig) -> BatchingConfig:
        """Read ``dynamic_batching``; raises ConfigError on values Triton would refuse."""
        name = config.name
        batching = config.dynamic_batching
        max_batch = config.max_batch_size
        if max_batch <= 0:
            raise ConfigError(f"model '{name}': dynamic batching needs max_batch_size > 0")
        preferred = tuple(sorted(set(batching.preferred_batch_size)))
        for size in preferred:
            if size < 1 or size > max_batch:
                raise ConfigError(
                    f"model '{name}': preferred_batch_size {size} is not within 1 to "
                    f"max_batch_size {max_batch}"
                )
        levels = batching.priority_levels
        default_level = batching.default_priority_level
        if levels == 0:
            if default_level not in (0, 1) or batching.priority_queue_policy:
                raise ConfigError(
                    f"model '{name}': default_priority_level and priority_queue_policy need "
                    "priority_levels > 0"
                )
            levels, default_level = 1, 1
        elif not 1 <= default_level <= levels:
            raise ConfigError(
                f"model '{name}': default_priority_level must be within 1 to priority_levels "
                f"({levels}), not {default_level}"
            )
        default_policy = QueuePolicy.from_proto(batching.default_queue_policy)
        for level in batching.priority_queue_policy:
            if not 1 <= level <= levels:
                raise ConfigError(
                    f"model '{name}': priority_queue_policy for level {level}, but "
                    f"priority_levels is {levels}"
                )
        policies = tuple(
            QueuePolicy.from_proto(batching.priority_queue_policy[level])
            if level in batching.priority_queue_policy
            else default_policy
            for level in range(1, levels + 1)
        )
        return cls(
            max_batch_size=max_batch,
            preferred_batch_sizes=preferred,
            max_queue_delay_ns=batching.max_queue_delay_microseconds * 1000,
            preserve_ordering=batching.preserve_ordering,
            priority_levels=levels,
            default_priority_level=default_level,
            policies=policies,
            allowed_batch_sizes=parse_allowed_batch_sizes(config),
        )

    def level_of(self, priority: int) -> int:
        """A request's priority as a 0-based level index; 0 or out of range is the default."""
        if priority == 0 or priority > self.priority_levels:
            priority = self.default_priority_level
        return priority - 1

    @property
    def target_rows(self) -> int:
        """Rows at which a batch leaves at once: the largest preferred size, else the max."""
        limit = self.max_batch_size
        if self.allowed_batch_sizes:
            limit = min(limit, self.allowed_batch_sizes[-1])
        if self.preferred_batch_sizes:
            return min(limit, self.preferred_batch_sizes[-1])
        return limit

    @property
    def max_rows(self) -> int:
        """Rows one batch may hold (padding cannot go beyond the largest allowed size)."""
        if self.allowed_batch_sizes:
            return min(self.max_batch_size, self.allowed_batch_sizes[-1])
        return self.max_batch_size

    def padded_rows(self, rows: int) -> int:
        """The allowed batch size a batch of ``rows`` is padded to (``rows`` if none)."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def parse_allowed_batch_sizes(config: mc.ModelConfig) -> tuple[int, ...]:
    """The ``allowed_batch_sizes`` parameter, sorted (() if absent); the batcher pads
    to them and CUDA graphs capture one graph each. Raises ConfigError on bad values."""
    if ALLOWED_BATCH_SIZES_PARAMETER not in config.parameters:
        return ()
    text = config.parameters[ALLOWED_BATCH_SIZES_PARAMETER].string_value
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(
            f"model '{config.name}': parameter {ALLOWED_BATCH_SIZES_PARAMETER} must be a "
            f"comma-separated list of batch sizes, not '{text}'"
        ) from None
    if not sizes or sizes[0] < 1 or sizes[-1] > config.max_batch_size:
        raise ConfigError(
            f"model '{config.name}': parameter {ALLOWED_BATCH_SIZES_PARAMETER} must list sizes "
            f"within 1 to max_batch_size ({config.max_batch_size}), not '{text}'"
        )
    return sizes
