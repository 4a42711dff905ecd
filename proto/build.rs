//! Compiles `csi.proto` with the vendored `protoc`, so no system protoc is needed.

use std::path::PathBuf;

const PROTO: &str = "csi.proto";
const PACKAGE: &str = "csi.v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let source = std::fs::read_to_string(PROTO)?;
    let secret_bearing = messages_with_secrets(&source)?;

    // The vendored include directory holds descriptor.proto, timestamp.proto and wrappers.proto.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let includes = [PathBuf::from("."), protoc_bin_vendored::include_path()?];

    // Messages with a `csi_secret` field get a hand-written Debug (src/redact.rs) instead of the
    // derived one, so that secrets never reach a log line.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .skip_debug(secret_bearing.iter().map(|name| format!(".{PACKAGE}.{name}")))
        .compile_with_config(config, &[PathBuf::from(PROTO)], &includes)?;
    Ok(())
}

/// Names of the top-level messages that hold a field marked `(csi_secret) = true`.
///
/// This reads our own `csi.proto`, whose layout we control: one declaration per line. A secret
/// inside a nested message is refused, because src/redact.rs only handles top-level ones.
fn messages_with_secrets(source: &str) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    // Enclosing messages, each with the brace depth at which its body starts.
    let mut messages: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    for (number, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default().trim();
        if let Some(rest) = code.strip_prefix("message ") {
            let name = rest.trim_end_matches(['{', '}', ' ']);
            messages.push((name.to_owned(), depth + 1));
        }
        if code.contains("(csi_secret) = true") {
            match messages.as_slice() {
                [(name, _)] => {
                    if !found.contains(name) {
                        found.push(name.clone());
                    }
                }
                _ => return Err(format!("{PROTO}:{}: secret outside a top-level message", number + 1)),
            }
        }
        for c in code.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.checked_sub(1).ok_or(format!("{PROTO}:{}: unbalanced }}", number + 1))?;
                    if messages.last().is_some_and(|(_, body)| *body > depth) {
                        messages.pop();
                    }
                }
                _ => {}
            }
        }
    }
    Ok(found)
}
