//! gRPC server reflection (v1alpha, as the Python front end serves it), answering
//! each file with the files it depends on, transitively, as grpcio's reflection
//! does (tonic-reflection answers the file alone, which some clients cannot use).
use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1alpha::server_reflection_server::{
    ServerReflection, ServerReflectionServer,
};
use tonic_reflection::pb::v1alpha::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
};

#[derive(Default)]
struct Index {
    /// File name -> (its serialized FileDescriptorProto, the files it imports).
    files: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// Fully qualified symbol -> the file that defines it.
    symbols: HashMap<String, String>,
    services: Vec<String>,
}

impl Index {
    fn add_set(&mut self, encoded: &[u8], services: bool) -> Result<(), String> {
        let set = FileDescriptorSet::decode(encoded).map_err(|e| format!("reflection: {e}"))?;
        for file in set.file {
            self.add_file(file, services);
        }
        Ok(())
    }

    fn add_file(&mut self, file: FileDescriptorProto, services: bool) {
        let name = file.name().to_owned();
        let package = file.package().to_owned();
        let qualify = |symbol: &str| {
            if package.is_empty() {
                symbol.to_owned()
            } else {
                format!("{package}.{symbol}")
            }
        };
        for service in &file.service {
            let full = qualify(service.name());
            for method in &service.method {
                self.symbols
                    .insert(format!("{full}.{}", method.name()), name.clone());
            }
            if services {
                self.services.push(full.clone());
            }
            self.symbols.insert(full, name.clone());
        }
        for message in &file.message_type {
            self.add_message(&qualify(message.name()), message, &name);
        }
        for enumeration in &file.enum_type {
            self.symbols
                .insert(qualify(enumeration.name()), name.clone());
        }
        let encoded = file.encode_to_vec();
        self.files.insert(name, (encoded, file.dependency));
    }

    fn add_message(&mut self, full: &str, message: &DescriptorProto, file: &str) {
        self.symbols.insert(full.to_owned(), file.to_owned());
        for nested in &message.nested_type {
            self.add_message(&format!("{full}.{}", nested.name()), nested, file);
        }
        for enumeration in &message.enum_type {
            self.symbols
                .insert(format!("{full}.{}", enumeration.name()), file.to_owned());
        }
    }

    /// The file and every file it imports, transitively, each once, the file first.
    fn with_dependencies(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        self.files.get(name)?;
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        let mut queue = VecDeque::from([name.to_owned()]);
        while let Some(next) = queue.pop_front() {
            if !seen.insert(next.clone()) {
                continue;
            }
            if let Some((encoded, dependencies)) = self.files.get(&next) {
                order.push(encoded.clone());
                queue.extend(dependencies.iter().cloned());
            }
        }
        Some(order)
    }

    fn answer(&self, request: Option<MessageRequest>) -> MessageResponse {
        let not_found = |what: String| {
            MessageResponse::ErrorResponse(ErrorResponse {
                error_code: tonic::Code::NotFound as i32,
                error_message: what,
            })
        };
        let files = |found: Option<Vec<Vec<u8>>>, what: String| match found {
            Some(file_descriptor_proto) => {
                MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                    file_descriptor_proto,
                })
            }
            None => not_found(what),
        };
        match request {
            Some(MessageRequest::FileByFilename(name)) => files(
                self.with_dependencies(&name),
                format!("file '{name}' not found"),
            ),
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                let found = self
                    .symbols
                    .get(&symbol)
                    .and_then(|file| self.with_dependencies(file));
                files(found, format!("symbol '{symbol}' not found"))
            }
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
                MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: name,
                    extension_number: vec![],
                })
            }
            Some(MessageRequest::FileContainingExtension(_)) => {
                not_found("extensions are not supported".into())
            }
            None => MessageResponse::ErrorResponse(ErrorResponse {
                error_code: tonic::Code::InvalidArgument as i32,
                error_message: "the request names nothing to reflect".into(),
            }),
        }
    }
}

pub struct Reflection {
    index: Arc<Index>,
}

/// The reflection service over the protocol's files (`encoded`, a FileDescriptorSet)
/// and its own.
pub fn service(encoded: &[u8]) -> Result<ServerReflectionServer<Reflection>, String> {
    let mut index = Index::default();
    index.add_set(encoded, true)?;
    index.add_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET, true)?;
    Ok(ServerReflectionServer::new(Reflection {
        index: Arc::new(index),
    }))
}

type Answers =
    Pin<Box<dyn futures_util::Stream<Item = Result<ServerReflectionResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ServerReflection for Reflection {
    type ServerReflectionInfoStream = Answers;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<ServerReflectionRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let index = self.index.clone();
        let answers = request.into_inner().map(move |asked| {
            let asked = asked?;
            Ok(ServerReflectionResponse {
                valid_host: asked.host.clone(),
                message_response: Some(index.answer(asked.message_request.clone())),
                original_request: Some(asked),
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::ServiceDescriptorProto;

    #[test]
    fn a_file_comes_with_what_it_imports() {
        let mut index = Index::default();
        index.add_file(
            FileDescriptorProto {
                name: Some("base.proto".into()),
                package: Some("p".into()),
                message_type: vec![DescriptorProto {
                    name: Some("Shared".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            true,
        );
        index.add_file(
            FileDescriptorProto {
                name: Some("service.proto".into()),
                package: Some("p".into()),
                dependency: vec!["base.proto".into()],
                service: vec![ServiceDescriptorProto {
                    name: Some("Svc".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            true,
        );
        let files = index.with_dependencies("service.proto").unwrap_or_default();
        let names: Vec<String> = files
            .iter()
            .filter_map(|raw| FileDescriptorProto::decode(raw.as_slice()).ok())
            .map(|file| file.name().to_owned())
            .collect();
        assert_eq!(names, ["service.proto", "base.proto"]);
        assert_eq!(
            index.symbols.get("p.Svc").map(String::as_str),
            Some("service.proto")
        );
        assert_eq!(
            index.symbols.get("p.Shared").map(String::as_str),
            Some("base.proto")
        );
        assert_eq!(index.services, ["p.Svc"]);
        assert!(matches!(
            index.answer(Some(MessageRequest::FileByFilename("nope".into()))),
            MessageResponse::ErrorResponse(_)
        ));
    }
}
