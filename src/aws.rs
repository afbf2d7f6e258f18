//! The AWS SDK as every role uses it (SNS and SQS for the fan-out, KMS for the master key):
//! credentials from the standard chain (environment, profile, web identity, container and
//! instance metadata), rustls with the `ring` provider as the rest of the binary (the SDK's
//! default `aws-lc-rs` would leave rustls without a process-level provider), and every call
//! bounded.

use std::time::Duration;

use aws_config::BehaviorVersion;

/// The SDK configuration for `region`, at `endpoint` when given (an emulator, a VPC endpoint).
pub async fn sdk_config(region: &str, endpoint: Option<&str>) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    // A long poll waits at most 20 s, so an attempt gets 25 s, and an operation (retries
    // included) a minute: a peer that vanished mid-call is noticed.
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(25))
        .operation_timeout(Duration::from_secs(60))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An SDK error as one line: the service's code and message when it answered, the transport's
/// cause when it did not (the SDK's own `Display` says only "service error").
pub fn sdk_error<E, R>(e: &aws_sdk_sns::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sns::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        aws_sdk_sns::error::SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("service error"),
                err.message().unwrap_or("no message")
            )
        }
        other => crate::feed::error_chain(other),
    }
}
