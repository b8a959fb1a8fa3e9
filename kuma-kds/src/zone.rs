//! A zone's KDS client: dials global, opens both sync streams (receiving global's resources on
//! `GlobalToZoneSync`, sending its own on `ZoneToGlobalSync`) and pings `HealthCheck` when
//! global asks for it. When anything fails it closes the connection and dials again with
//! backoff; what it received stays in its store meanwhile, so its proxies keep their config.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use kuma_core::resource::ResourceType;
use kuma_core::store::ResourceStore;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::directions;
use crate::feed::Feed;
use crate::grpc::global_kds_service_client::GlobalKDSServiceClient;
use crate::grpc::kds_sync_service_client::KDSSyncServiceClient;
use crate::receiver::{self, NodeInfo, Receiving, StoreSync};
use crate::sender::{self, Peer};
use crate::stats::StreamStats;

/// The features this zone announces (Kuma's names).
pub const FEATURES: &[&str] = &["zone-ping-health", "hash-suffix", "producer-policy-flow"];

/// A zone's KDS settings (`multizone.zone.*`).
#[derive(Clone)]
pub struct ZoneSettings {
    /// The zone's name (`multizone.zone.name`), its `client-id`.
    pub zone: String,
    /// Global's KDS address (`multizone.zone.globalAddress`: `grpcs://host:5685`).
    pub global_address: String,
    /// TLS client settings for `grpcs://` (trusting `kds.rootCaFile`, or anything with
    /// `kds.tlsSkipVerify`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The largest message sent or received (`kds.maxMsgSize`).
    pub max_msg_size: usize,
    /// This instance's id.
    pub instance_id: String,
    /// This control plane's version, announced to global.
    pub version: String,
    /// This control plane's config as JSON, announced to global.
    pub config_json: String,
    /// The first wait before dialing again; it doubles up to [`ZoneSettings::max_backoff`].
    pub backoff: Duration,
    /// The longest wait before dialing again.
    pub max_backoff: Duration,
}

impl std::fmt::Debug for ZoneSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneSettings")
            .field("zone", &self.zone)
            .field("global_address", &self.global_address)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a connection to global ended.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// `globalAddress` is not usable.
    #[error("multizone.zone.globalAddress {0:?}: {1}")]
    Address(String, String),
    /// Dialing failed.
    #[error("connecting to global at {0}: {1}")]
    Connect(String, String),
    /// A stream could not be opened.
    #[error("opening {0}: {1}")]
    Open(&'static str, tonic::Status),
    /// A stream failed.
    #[error("{0}")]
    Stream(String),
}

/// Keeps a zone connected to global until `stop` turns true; returns then.
pub async fn run(
    settings: ZoneSettings,
    store: Arc<dyn ResourceStore>,
    feed: Arc<Feed>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = settings.backoff;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = connect_once(&settings, store.clone(), feed.clone()) => r,
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
        };
        if let Err(e) = result {
            tracing::warn!(zone = %settings.zone, error = %e, "KDS: connection to global ended; dialing again in {backoff:?}");
        }
        // A connection that lasted starts the backoff over.
        if started.elapsed() > settings.max_backoff {
            backoff = settings.backoff;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

async fn channel(settings: &ZoneSettings) -> Result<Channel, ZoneError> {
    let address = settings.global_address.as_str();
    let bad = |why: &str| ZoneError::Address(address.to_string(), why.to_string());
    let (tls, rest) = if let Some(rest) = address.strip_prefix("grpcs://") {
        (true, rest)
    } else if let Some(rest) = address.strip_prefix("grpc://") {
        (false, rest)
    } else {
        return Err(bad("must start with grpcs:// or grpc://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("must name a port (host:port)"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let endpoint = Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|e| bad(&e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(15));
    let connect_err =
        |e: &dyn std::fmt::Display| ZoneError::Connect(address.to_string(), e.to_string());
    if !tls {
        return endpoint.connect().await.map_err(|e| connect_err(&e));
    }
    let config = settings
        .tls
        .clone()
        .ok_or_else(|| bad("grpcs:// needs multizone.zone.kds.rootCaFile (or tlsSkipVerify)"))?;
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        let host = host.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| connect_err(&e))
}

/// The node metadata Kuma's zones send: version, config, instance id, features.
fn node_metadata(settings: &ZoneSettings) -> Struct {
    let s = |v: &str| PbValue {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut kuma_cp = Struct::default();
    kuma_cp
        .fields
        .insert("version".into(), s(&settings.version));
    let mut version = Struct::default();
    version.fields.insert(
        "kumaCp".into(),
        PbValue {
            kind: Some(Kind::StructValue(kuma_cp)),
        },
    );
    let mut meta = Struct::default();
    meta.fields.insert(
        "version".into(),
        PbValue {
            kind: Some(Kind::StructValue(version)),
        },
    );
    meta.fields
        .insert("config".into(), s(&settings.config_json));
    meta.fields
        .insert("control-plane-id".into(), s(&settings.instance_id));
    meta.fields.insert(
        "features".into(),
        PbValue {
            kind: Some(Kind::ListValue(
                envoy_types::pb::google::protobuf::ListValue {
                    values: FEATURES.iter().map(|f| s(f)).collect(),
                },
            )),
        },
    );
    meta
}

fn with_metadata<T>(settings: &ZoneSettings, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let md = request.metadata_mut();
    if let Ok(v) = settings.zone.parse() {
        md.insert("client-id", v);
    }
    md.insert(
        "kds-version",
        tonic::metadata::MetadataValue::from_static("v3"),
    );
    for f in FEATURES {
        md.append("features", tonic::metadata::MetadataValue::from_static(f));
    }
    request
}

async fn connect_once(
    settings: &ZoneSettings,
    store: Arc<dyn ResourceStore>,
    feed: Arc<Feed>,
) -> Result<(), ZoneError> {
    let channel = channel(settings).await?;
    let limit = settings.max_msg_size;
    // As Kuma's zones do: messages to global are compressed with gzip.
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    let mut sync_client = KDSSyncServiceClient::new(channel.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
        .send_compressed(gzip)
        .accept_compressed(gzip);
    tracing::info!(zone = %settings.zone, global = %settings.global_address, "KDS: connected to global");

    // Global to zone: this side subscribes and writes what arrives.
    let (req_tx, req_rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let inbound = sync_client
        .global_to_zone_sync(with_metadata(settings, ReceiverStream::new(req_rx)))
        .await
        .map_err(|e| ZoneError::Open("GlobalToZoneSync", e))?
        .into_inner();
    let types: Vec<ResourceType> = directions::global_to_zone_types().collect();
    let node = NodeInfo {
        id: settings.zone.clone(),
        metadata: Some(node_metadata(settings)),
    };
    let receive = receiver::receive(
        types,
        node,
        req_tx,
        inbound,
        StoreSync::new(store, Receiving::Zone),
        Arc::new(StreamStats::default()),
    );

    // Zone to global: global subscribes, this side sends its feed.
    let (resp_tx, resp_rx) = mpsc::channel::<DeltaDiscoveryResponse>(64);
    let outbound_requests = sync_client
        .zone_to_global_sync(with_metadata(settings, ReceiverStream::new(resp_rx)))
        .await
        .map_err(|e| ZoneError::Open("ZoneToGlobalSync", e))?
        .into_inner();
    let peer = Peer {
        zone: settings.zone.clone(),
        hash_suffix: true,
        max_msg_size: limit,
    };
    let send = sender::serve(
        feed,
        peer,
        outbound_requests,
        resp_tx,
        Arc::new(StreamStats::default()),
    );

    let health = health_check(
        settings,
        GlobalKDSServiceClient::new(channel).accept_compressed(gzip),
    );
    tokio::select! {
        r = receive => Err(ZoneError::Stream(match r {
            Ok(()) => "global closed GlobalToZoneSync".into(),
            Err(e) => format!("GlobalToZoneSync: {e}"),
        })),
        r = send => Err(ZoneError::Stream(match r {
            Ok(()) => "global closed ZoneToGlobalSync".into(),
            Err(e) => format!("ZoneToGlobalSync: {e}"),
        })),
        r = health => r,
    }
}

/// Pings global at the interval it asks for; stops pinging (but keeps the connection) when
/// global does not ask or does not implement it.
async fn health_check(
    settings: &ZoneSettings,
    mut client: GlobalKDSServiceClient<Channel>,
) -> Result<(), ZoneError> {
    loop {
        let response = client
            .health_check(with_metadata(
                settings,
                crate::grpc::ZoneHealthCheckRequest {},
            ))
            .await;
        let interval = match response {
            Ok(r) => r.into_inner().interval,
            Err(status) if status.code() == tonic::Code::Unimplemented => None,
            Err(status) => {
                return Err(ZoneError::Stream(format!("HealthCheck: {status}")));
            }
        };
        let Some(interval) = interval.filter(|d| d.seconds > 0 || d.nanos > 0) else {
            return std::future::pending().await;
        };
        let wait = Duration::new(
            u64::try_from(interval.seconds).unwrap_or(0),
            u32::try_from(interval.nanos).unwrap_or(0),
        );
        tokio::time::sleep(wait).await;
    }
}

/// The TLS client settings for `grpcs://`: trusting the CA certificates in `root_ca_pem`
/// (`kds.rootCaFile`), or, with `skip_verify` (`kds.tlsSkipVerify`), any certificate.
pub fn tls_client_config(
    root_ca_pem: Option<&[u8]>,
    skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let mut config = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let pem = root_ca_pem.ok_or(
            "multizone.zone.kds.rootCaFile: required to verify global's certificate (or set tlsSkipVerify)",
        )?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(cert.map_err(|e| format!("multizone.zone.kds.rootCaFile: {e}"))?)
                .map_err(|e| format!("multizone.zone.kds.rootCaFile: {e}"))?;
        }
        if roots.is_empty() {
            return Err("multizone.zone.kds.rootCaFile: no certificate in the file".into());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (`tlsSkipVerify`), still checking the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
