//! The process's TLS crypto provider. reqwest is built with rustls but without a provider
//! of its own (`rustls-no-provider`: its default, aws-lc, adds minutes of C to every cold
//! build), so ring must be installed before any `reqwest::Client` is built — agent calls
//! and the OTLP exporter alike. Every place that builds one calls [`install_provider`];
//! repeating it is harmless.

/// Makes ring the process-wide rustls provider, unless one is installed already.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
