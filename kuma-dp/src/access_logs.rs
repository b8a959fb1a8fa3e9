//! The access-log forwarder: Envoy writes the entries of MeshAccessLog's TCP backends to a
//! named pipe in kuma-dp's work directory, one JSON object per line,
//! `{"address": "host:port", "message": "a line\n" | {...}}` (or, as Kuma also accepts,
//! `address;message`), and this task sends each message to its collector over TCP.
//!
//! One connection per collector, opened on first use and reopened once when a write fails; a
//! collector that cannot be reached costs its entries (with a warning), never the proxy's
//! traffic: Envoy only blocks its log-flushing thread if this task stops reading.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::Mode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::unix::pipe;

/// How long connecting to a collector may take before its entry is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Creates the pipe at `path` (replacing whatever was there) and opens it for reading. Done
/// before Envoy starts, so Envoy's open of the path finds a reader and never blocks.
pub fn open(path: &Path) -> Result<pipe::Receiver, String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
    }
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("cannot create the access-log pipe {}: {e}", path.display()))?;
    // Read-write: the pipe never reports end-of-file when Envoy closes and reopens it.
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(|e| format!("cannot open the access-log pipe {}: {e}", path.display()))
}

/// Forwards entries from `pipe` until it fails; removes `path` at the end.
pub async fn forward(pipe: pipe::Receiver, path: PathBuf) {
    let mut lines = BufReader::new(pipe).lines();
    let mut collectors: HashMap<String, TcpStream> = HashMap::new();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                eprintln!("kuma-dp: access-log pipe {}: {e}", path.display());
                break;
            }
        };
        let Some((address, message)) = parse(&line) else {
            eprintln!(
                "kuma-dp: access-log entry dropped: expected {{\"address\", \"message\"}} JSON or `address;message`"
            );
            continue;
        };
        if let Err(e) = send(&mut collectors, &address, &message).await {
            eprintln!("kuma-dp: access-log entry for {address} dropped: {e}");
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// An entry's collector address and the bytes to send it.
fn parse(line: &str) -> Option<(String, Vec<u8>)> {
    if let Ok(serde_json::Value::Object(entry)) = serde_json::from_str(line) {
        let address = entry.get("address")?.as_str()?.to_string();
        let message = match entry.get("message")? {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            object => {
                let mut bytes = serde_json::to_vec(object).ok()?;
                bytes.push(b'\n');
                bytes
            }
        };
        return Some((address, message));
    }
    let (address, message) = line.split_once(';')?;
    let mut bytes = message.as_bytes().to_vec();
    bytes.push(b'\n');
    Some((address.to_string(), bytes))
}

async fn connect(address: &str) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    }
}

async fn send(
    collectors: &mut HashMap<String, TcpStream>,
    address: &str,
    message: &[u8],
) -> Result<(), String> {
    if let Some(stream) = collectors.get_mut(address) {
        if stream.write_all(message).await.is_ok() {
            return Ok(());
        }
        // The collector closed or restarted: one fresh connection below.
        collectors.remove(address);
    }
    let mut stream = connect(address).await?;
    stream
        .write_all(message)
        .await
        .map_err(|e| format!("cannot write: {e}"))?;
    collectors.insert(address.to_string(), stream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn entries_parse_as_kuma_writes_them() {
        assert_eq!(
            parse(r#"{"address":"127.0.0.1:5170","message":"GET / 200\n"}"#),
            Some(("127.0.0.1:5170".into(), b"GET / 200\n".to_vec()))
        );
        assert_eq!(
            parse(r#"{"address":"c:1","message":{"status":200}}"#),
            Some(("c:1".into(), b"{\"status\":200}\n".to_vec()))
        );
        assert_eq!(
            parse("c:1;plain line"),
            Some(("c:1".into(), b"plain line\n".to_vec()))
        );
        assert_eq!(parse(r#"{"message":"no address"}"#), None);
        assert_eq!(parse("neither json nor separated"), None);
    }
}
