//! The `tracing` subscriber of the `keyward` binary: text or JSON lines on stderr, filtered by
//! `KEYWARD_LOG`, plus (feature `otlp`, `[otlp] endpoint` set) OpenTelemetry trace export over
//! OTLP/gRPC. docs/observability.md lists the fields and span attributes.

use keyward_server::telemetry::LogFormat;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Where spans are exported, when they are.
#[derive(Debug, Clone)]
pub(crate) struct OtlpTarget {
    pub(crate) endpoint: String,
    pub(crate) service_name: String,
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans still buffered.
#[derive(Debug)]
pub(crate) struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by the exporter's own timeout).
    pub(crate) fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not flush the last trace spans");
        }
    }
}

/// Installs the global subscriber. Must run inside the Tokio runtime (the OTLP exporter's
/// gRPC channel is spawned on it).
pub(crate) fn init(
    default_filter: &str,
    format: LogFormat,
    otlp: Option<OtlpTarget>,
) -> anyhow::Result<Telemetry> {
    let filter = || {
        EnvFilter::try_from_env("KEYWARD_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter))
    };
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter())
    });
    // One object per line; the fields of the current span (request_id, tenant, code) under
    // "span", the event's own fields at the top level.
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let registry = tracing_subscriber::registry().with(text).with(json);
    #[cfg(feature = "otlp")]
    {
        let (tracer, provider) = match otlp {
            Some(target) => {
                let (tracer, provider) = otlp_tracer(&target)?;
                (Some(tracer), Some(provider))
            }
            None => (None, None),
        };
        // Keyward's own spans (the `rpc` span of every call and those inside it) at info and
        // above, whatever KEYWARD_LOG says; never the exporter's own gRPC calls.
        let layer = tracer.map(|tracer| {
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(EnvFilter::new("keyward_server=info,keyward_cli=info"))
        });
        registry.with(layer).try_init()?;
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.try_init()?;
        if let Some(target) = otlp {
            tracing::warn!(endpoint = %target.endpoint, "[otlp] endpoint is set but this build has no `otlp` feature: no traces are exported");
        }
        Ok(Telemetry {})
    }
}

/// The tracer of a batch exporter to the collector.
#[cfg(feature = "otlp")]
fn otlp_tracer(
    target: &OtlpTarget,
) -> anyhow::Result<(
    opentelemetry_sdk::trace::SdkTracer,
    opentelemetry_sdk::trace::SdkTracerProvider,
)> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(target.endpoint.clone())
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(target.service_name.clone())
                .build(),
        )
        .build();
    Ok((provider.tracer("keyward"), provider))
}
