//! OTLP span export configured by the standard `OTEL_*` variables: whether to export at all,
//! over which protocol, where, with which sampler, and what the service calls itself.
//!
//! Nothing is exported unless an endpoint is given (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or `OTEL_TRACES_EXPORTER=otlp` asks for the default
//! one; `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off. Headers, timeout
//! and compression are read by the exporter itself, batching by the SDK (`OTEL_BSP_*`).

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use opentelemetry::{
    Context, KeyValue,
    trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState},
};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig, tonic_types::transport};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::{
        Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, SpanData,
        SpanExporter,
    },
};

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` gives one.
const DEFAULT_SERVICE_NAME: &str = "label-studio-identity";

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

impl fmt::Display for SamplerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlwaysOn => f.write_str("always_on"),
            Self::AlwaysOff => f.write_str("always_off"),
            Self::Ratio(ratio) => write!(f, "traceidratio {ratio}"),
            Self::ParentBasedAlwaysOn => f.write_str("parentbased_always_on"),
            Self::ParentBasedAlwaysOff => f.write_str("parentbased_always_off"),
            Self::ParentBasedRatio(ratio) => write!(f, "parentbased_traceidratio {ratio}"),
        }
    }
}

/// A file a variable names, with the variable, for messages.
type FileVariable = (&'static str, String);

/// TLS files for a gRPC collector behind `https://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TlsFiles {
    /// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`: the CA to trust instead of the public roots.
    ca: Option<FileVariable>,
    /// `…_CLIENT_CERTIFICATE` and `…_CLIENT_KEY`: a client certificate for mutual TLS.
    client: Option<(FileVariable, FileVariable)>,
}

/// Span export as the environment asks for it.
#[derive(Debug, Clone)]
pub struct TraceExport {
    protocol: Protocol,
    /// Where spans go, without credentials, for the start-up log line.
    endpoint: String,
    https: bool,
    tls: TlsFiles,
    sampler: SamplerChoice,
    warnings: Vec<String>,
}

impl TraceExport {
    /// Reads the process environment; `None` when nothing asks for export.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `var`. Empty values count as unset, as the specification
    /// says; values that can't be used stop the start with a message naming the variable.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();
        if let Some(disabled) = var("OTEL_SDK_DISABLED") {
            if disabled.eq_ignore_ascii_case("true") {
                return Ok(None);
            }
            if !disabled.eq_ignore_ascii_case("false") {
                warnings.push(format!(
                    "OTEL_SDK_DISABLED={disabled:?} is neither true nor false; read as false"
                ));
            }
        }
        let traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let base_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        let wanted = match var("OTEL_TRACES_EXPORTER") {
            Some(exporters) => {
                let mut otlp = false;
                let mut none = false;
                for exporter in exporters.split(',').map(str::trim) {
                    match exporter.to_ascii_lowercase().as_str() {
                        "otlp" => otlp = true,
                        "none" => none = true,
                        "" => {}
                        other => warnings.push(format!(
                            "OTEL_TRACES_EXPORTER names {other:?}; only otlp is supported"
                        )),
                    }
                }
                otlp && !none
            }
            None => traces_endpoint.is_some() || base_endpoint.is_some(),
        };
        if !wanted {
            return Ok(None);
        }
        let (protocol_variable, protocol) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(protocol) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(protocol)),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                var("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        };
        let protocol = match protocol.as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                bail!("{protocol_variable}={other:?} is not supported: use grpc or http/protobuf")
            }
        };
        let (endpoint_variable, endpoint) = match (traces_endpoint, base_endpoint) {
            (Some(endpoint), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                match protocol {
                    Protocol::Grpc => base,
                    Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                },
            ),
            (None, None) => (
                "the default endpoint",
                match protocol {
                    Protocol::Grpc => "http://localhost:4317".to_owned(),
                    Protocol::HttpProtobuf => "http://localhost:4318/v1/traces".to_owned(),
                },
            ),
        };
        let scheme = endpoint.split_once("://").map(|(scheme, _)| scheme);
        let https = match scheme.map(str::to_ascii_lowercase).as_deref() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("{endpoint_variable} must start with http:// or https://"),
        };
        let uri: http::Uri = endpoint.parse().map_err(|e| {
            anyhow::anyhow!("{endpoint_variable} is no URL ({e}): give http://HOST:PORT")
        })?;
        if https && protocol == Protocol::HttpProtobuf {
            bail!(
                "{endpoint_variable} is https://, which this service speaks to collectors over \
                 gRPC only: set OTEL_EXPORTER_OTLP_PROTOCOL=grpc, or use an http:// endpoint"
            );
        }
        let tls = tls_files(&var)?;
        if !https && tls != TlsFiles::default() {
            warnings.push(format!(
                "the OTLP certificate variables apply to https:// endpoints only; {endpoint_variable} is http://"
            ));
        }
        Ok(Some(Self {
            protocol,
            endpoint: without_credentials(&uri),
            https,
            tls,
            sampler: sampler(&var, &mut warnings)?,
            warnings,
        }))
    }

    pub fn protocol(&self) -> &'static str {
        self.protocol.name()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn sampler_name(&self) -> String {
        self.sampler.to_string()
    }

    /// What was set but is ignored, to be logged once logging runs.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The tracer provider: a batch of spans at a time, exported on the current Tokio runtime.
    pub(super) fn provider(&self) -> anyhow::Result<SdkTracerProvider> {
        let exporter = match self.protocol {
            Protocol::Grpc => {
                let builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                let builder = if self.https {
                    builder.with_tls_config(self.tls.config()?)
                } else {
                    builder
                };
                builder.build()
            }
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build(),
        }
        .context("cannot set up the OTLP span exporter")?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(OnRuntime::new(exporter))
            .with_sampler(RequestsOnly(self.sampler.sampler()))
            .with_resource(resource())
            .build())
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument; unset means `parentbased_always_on`.
fn sampler(
    var: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<SamplerChoice> {
    let ratio = || -> anyhow::Result<f64> {
        match var("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => arg
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .with_context(|| {
                    format!("OTEL_TRACES_SAMPLER_ARG={arg:?} is no ratio from 0 to 1")
                }),
        }
    };
    let Some(name) = var("OTEL_TRACES_SAMPLER") else {
        return Ok(SamplerChoice::ParentBasedAlwaysOn);
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "always_on" => SamplerChoice::AlwaysOn,
        "always_off" => SamplerChoice::AlwaysOff,
        "traceidratio" => SamplerChoice::Ratio(ratio()?),
        "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerChoice::ParentBasedRatio(ratio()?),
        // Samplers of the specification that need a remote service this one doesn't speak.
        "jaeger_remote" | "parentbased_jaeger_remote" | "xray" => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER={name} is not supported; sampling parentbased_always_on"
            ));
            SamplerChoice::ParentBasedAlwaysOn
        }
        _ => bail!(
            "OTEL_TRACES_SAMPLER={name:?} is unknown: use always_on, always_off, traceidratio, \
             parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
        ),
    })
}

/// The CA and client certificate variables, the traces-specific ones first.
fn tls_files(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<TlsFiles> {
    let either = |specific: &'static str, general: &'static str| {
        var(specific)
            .map(|file| (specific, file))
            .or_else(|| var(general).map(|file| (general, file)))
    };
    let ca = either(
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    );
    let certificate = either(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let key = either(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    );
    let client = match (certificate, key) {
        (Some(certificate), Some(key)) => Some((certificate, key)),
        (None, None) => None,
        (Some((name, _)), None) | (None, Some((name, _))) => {
            bail!("{name} is set without its pair: give both the client certificate and its key")
        }
    };
    Ok(TlsFiles { ca, client })
}

impl TlsFiles {
    /// TLS towards the collector: its own CA if given, the public roots otherwise.
    fn config(&self) -> anyhow::Result<transport::ClientTlsConfig> {
        let read = |(variable, file): &FileVariable| {
            std::fs::read(file).with_context(|| format!("{variable}: cannot read {file}"))
        };
        let mut config = transport::ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(transport::Certificate::from_pem(read(ca)?)),
            None => config.with_webpki_roots(),
        };
        if let Some((certificate, key)) = &self.client {
            config = config.identity(transport::Identity::from_pem(
                read(certificate)?,
                read(key)?,
            ));
        }
        Ok(config)
    }
}

/// A URL as it may be logged: no user, password or query.
fn without_credentials(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |authority| {
        let authority = authority.as_str();
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host)
    });
    format!("{scheme}://{authority}{}", uri.path())
}

/// `service.name` from `OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else the binary's
/// name; `service.version` unless the attributes give one; and the SDK's own attributes.
fn resource() -> Resource {
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty());
    let mut builder = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_service_name(DEFAULT_SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detector(Box::new(EnvResourceDetector::new()));
    if let Some(name) = service_name {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// Samples the calls this service serves, and nothing it does on its own: a span without a
/// parent must be a server span (an RPC) to start a trace, so readiness pings, purges and
/// migrations never become traces of their own. The rest is the configured sampler's call.
#[derive(Debug, Clone)]
struct RequestsOnly(Sampler);

impl ShouldSample for RequestsOnly {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone());
        let dropped = match &parent {
            None => *span_kind != SpanKind::Server,
            // A local parent that was dropped (say, a background task's span) drops its
            // children too, whatever the configured sampler would say of them.
            Some(parent) => !parent.is_remote() && !parent.is_sampled(),
        };
        if dropped {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: parent.map_or_else(TraceState::default, |p| p.trace_state().clone()),
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Runs each export on the Tokio runtime the exporter was built on: the batch processor calls
/// it from a thread of its own, while the gRPC and HTTP clients need the runtime's reactor and
/// timers. Failures are logged once per outage, not once per batch.
#[derive(Debug)]
struct OnRuntime {
    exporter: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    failing: Arc<AtomicBool>,
}

impl OnRuntime {
    /// Must be called inside the runtime.
    fn new(exporter: opentelemetry_otlp::SpanExporter) -> Self {
        Self {
            exporter: Arc::new(exporter),
            runtime: tokio::runtime::Handle::current(),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let exporter = self.exporter.clone();
        let spans = batch.len();
        let outcome = match self
            .runtime
            .spawn(async move { exporter.export(batch).await })
            .await
        {
            Ok(outcome) => outcome,
            Err(join) => Err(OTelSdkError::InternalFailure(join.to_string())),
        };
        match &outcome {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export works again");
                }
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, spans, "trace export failed; spans are dropped until it works again");
                }
            }
        }
        outcome
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while the provider is built, before any export holds a clone.
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        } else {
            tracing::warn!("span exporter busy; its resource attributes are not updated");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn export(vars: &[(&str, &str)]) -> anyhow::Result<Option<TraceExport>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceExport::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_unless_an_endpoint_or_the_otlp_exporter_is_asked_for() {
        assert!(export(&[]).unwrap().is_none());
        assert!(
            export(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_TRACES_SAMPLER", "always_on")
            ])
            .unwrap()
            .is_none()
        );
        assert!(
            export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")])
                .unwrap()
                .is_none()
        );
        let default = export(&[("OTEL_TRACES_EXPORTER", "otlp")])
            .unwrap()
            .unwrap();
        assert_eq!(default.endpoint(), "http://localhost:4318/v1/traces");
        assert_eq!(default.protocol(), "http/protobuf");
    }

    #[test]
    fn the_sdk_switch_and_the_none_exporter_turn_export_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(
            export(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])
                .unwrap()
                .is_none()
        );
        assert!(
            export(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])
                .unwrap()
                .is_none()
        );
        assert!(
            export(&[endpoint, ("OTEL_TRACES_EXPORTER", "console")])
                .unwrap()
                .is_none()
        );
        let on = export(&[endpoint, ("OTEL_SDK_DISABLED", "nope")])
            .unwrap()
            .unwrap();
        assert_eq!(on.warnings().len(), 1, "{:?}", on.warnings());
    }

    #[test]
    fn the_endpoint_follows_the_protocol_and_the_traces_variable_wins() {
        let http = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(http.endpoint(), "http://collector:4318/v1/traces");
        let grpc = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(grpc.endpoint(), "http://collector:4317/");
        assert_eq!(grpc.protocol(), "grpc");
        let specific = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(specific.endpoint(), "http://traces:9999/custom");
        assert_eq!(specific.protocol(), "http/protobuf");
    }

    #[test]
    fn credentials_in_the_endpoint_are_never_shown() {
        let export = export(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://user:hunter2@collector:4318/v1/traces?key=abc",
        )])
        .unwrap()
        .unwrap();
        assert_eq!(export.endpoint(), "http://collector:4318/v1/traces");
    }

    #[track_caller]
    fn refused(vars: &[(&str, &str)], expected: &str) {
        let message = format!("{:#}", export(vars).expect_err("refused"));
        assert!(message.contains(expected), "{message}");
    }

    #[test]
    fn unusable_values_are_refused_naming_their_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        refused(
            &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not supported",
        );
        refused(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT must start with http://",
        );
        refused(
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a b")],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is no URL",
        );
        refused(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")],
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
        );
        refused(
            &[endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
            "OTEL_TRACES_SAMPLER=\"sometimes\" is unknown",
        );
        for arg in ["1.5", "-0.1", "half", "NaN"] {
            refused(
                &[
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", arg),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            );
        }
        refused(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "client.key"),
            ],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY is set without its pair",
        );
    }

    #[test]
    fn samplers_are_read_as_the_specification_names_them() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let sampler = |vars: &[(&str, &str)]| {
            let mut all = vec![endpoint];
            all.extend_from_slice(vars);
            export(&all).unwrap().unwrap().sampler
        };
        assert_eq!(sampler(&[]), SamplerChoice::ParentBasedAlwaysOn);
        assert_eq!(
            sampler(&[("OTEL_TRACES_SAMPLER", "ALWAYS_OFF")]),
            SamplerChoice::AlwaysOff
        );
        assert_eq!(
            sampler(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
            SamplerChoice::ParentBasedRatio(0.25)
        );
        assert_eq!(
            sampler(&[("OTEL_TRACES_SAMPLER", "traceidratio")]),
            SamplerChoice::Ratio(1.0)
        );
        assert_eq!(
            sampler(&[("OTEL_TRACES_SAMPLER", "xray")]),
            SamplerChoice::ParentBasedAlwaysOn
        );
    }

    fn decision(parent: Option<Context>, kind: SpanKind) -> SamplingDecision {
        RequestsOnly(Sampler::AlwaysOn)
            .should_sample(
                parent.as_ref(),
                TraceId::from(7_u128),
                "span",
                &kind,
                &[],
                &[],
            )
            .decision
    }

    fn parent(remote: bool, sampled: bool) -> Context {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(7_u128),
            SpanId::from(9_u64),
            flags,
            remote,
            TraceState::default(),
        ))
    }

    #[test]
    fn only_served_calls_start_traces() {
        assert_eq!(
            decision(None, SpanKind::Server),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(decision(None, SpanKind::Client), SamplingDecision::Drop);
        assert_eq!(decision(None, SpanKind::Internal), SamplingDecision::Drop);
        assert_eq!(
            decision(Some(parent(false, true)), SpanKind::Client),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decision(Some(parent(false, false)), SpanKind::Client),
            SamplingDecision::Drop
        );
        // A caller's unsampled trace is the configured sampler's call (here: always on).
        assert_eq!(
            decision(Some(parent(true, false)), SpanKind::Server),
            SamplingDecision::RecordAndSample
        );
    }
}
