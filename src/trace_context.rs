//! W3C trace context (`traceparent`, `tracestate`) across gRPC calls:
//! injected into the metadata of calls a node makes on behalf of a traced
//! request (a follower forwarding a write, a linearizable read asking the
//! leader), extracted by the service that answers, so one trace spans the
//! nodes. Uses the global propagator `telemetry` installs; without one
//! (no OTLP endpoint) both ends are no-ops.

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Adds the current span's context to an outgoing request.
pub fn inject<T>(request: &mut tonic::Request<T>) {
    let span = tracing::Span::current();
    if span.is_none() {
        return;
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()))
    });
}

/// Makes the caller's context (if the request carries one) the parent of `span`.
pub fn adopt(metadata: &MetadataMap, span: &tracing::Span) {
    if metadata.get("traceparent").is_none() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
    let _ = span.set_parent(parent);
}
