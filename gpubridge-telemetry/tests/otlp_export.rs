//! Spans leave the process over OTLP/HTTP: a collector stand-in on loopback (a plain TCP listener
//! that reads the POST and answers 200) receives protobuf with the spans' names, and a sampling
//! ratio of 0 exports nothing.

#![cfg(feature = "otlp")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use gpubridge_telemetry::otlp::{OtlpSettings, OtlpTracing};
use tracing_subscriber::layer::SubscriberExt;

struct Post {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Accepts connections on loopback and reports each request; answers every one with 200.
fn collector() -> (SocketAddr, mpsc::Receiver<Post>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                let (mut len, mut content_type) = (0usize, String::new());
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap(),
                        "content-type" => content_type = v.trim().to_owned(),
                        _ => {}
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                    .unwrap();
                if tx
                    .send(Post {
                        path,
                        content_type,
                        body,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    (addr, rx)
}

fn emit_spans(otlp: &OtlpTracing) {
    let subscriber = tracing_subscriber::registry().with(otlp.layer());
    tracing::subscriber::with_default(subscriber, || {
        let request = tracing::info_span!("gpubridge.request", kernel = "kernels/sum", items = 3);
        let _in_request = request.enter();
        tracing::info_span!(
            "gpubridge.kernel",
            backend = "cpu",
            device = "cpu:0",
            batch_size = 3
        )
        .in_scope(|| {});
    });
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn spans_are_posted_as_protobuf_to_the_traces_path() {
    let (addr, posts) = collector();
    let otlp = OtlpTracing::new(&OtlpSettings {
        endpoint: format!("http://{addr}"),
        sampling_rate: 1.0,
        service_name: "gpubridge-otlp-test".to_owned(),
    })
    .unwrap();
    emit_spans(&otlp);
    otlp.flush().unwrap();
    let post = posts.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(post.path, "/v1/traces");
    assert_eq!(post.content_type, "application/x-protobuf");
    for text in [
        "gpubridge.request",
        "gpubridge.kernel",
        "kernels/sum",
        "cpu:0",
        "gpubridge-otlp-test",
    ] {
        assert!(contains(&post.body, text), "{text} not in the export");
    }
    otlp.shutdown().unwrap();
}

#[test]
fn a_zero_sampling_rate_exports_nothing() {
    let (addr, posts) = collector();
    let otlp = OtlpTracing::new(&OtlpSettings {
        endpoint: format!("http://{addr}"),
        sampling_rate: 0.0,
        service_name: "gpubridge-otlp-test".to_owned(),
    })
    .unwrap();
    emit_spans(&otlp);
    // A flush returns once any export it started has been answered.
    otlp.flush().unwrap();
    assert!(posts.try_recv().is_err(), "an unsampled trace was exported");
}

#[test]
fn bad_settings_are_errors() {
    let bad_rate = OtlpSettings {
        endpoint: "http://127.0.0.1:4318".to_owned(),
        sampling_rate: 1.5,
        service_name: "t".to_owned(),
    };
    assert!(OtlpTracing::new(&bad_rate).is_err());
}
