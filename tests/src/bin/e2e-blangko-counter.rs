//! The same program as `blangko-counter`, built as part of this test package so the end-to-end
//! tests can run it as a child process without a separate build step.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    blangko_counter::main().await
}
