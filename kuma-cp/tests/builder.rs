//! `ControlPlane::builder` with every extension point swapped, run with real Envoys: a store of
//! the test's own (counting what goes through it), the Kuma profile plus a generator of the
//! test's own, a VIP allocator handing out addresses from its own range, a mesh CA backend type
//! our crates do not know, a dataplane authenticator accepting a shared secret, and an extra
//! HTTP route. Traffic flows over mesh mTLS issued by the added CA, through the listener the
//! added generator made; the VIP listener carries the added allocator's address.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{call, dataplane, post_bootstrap, start_proxy};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use kuma_ca::ca::{BuiltinCa, CertificateAuthority, KeyType};
use kuma_ca::dataplane_token::DataplaneIdentity;
use kuma_ca::mesh_ca::{CaManager, MeshCaError};
use kuma_core::manager::ResourceManager;
use kuma_core::model::mesh::CaBackend;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Version, parse_yaml};
use kuma_core::store::{ListQuery, Page, ResourceStore, StoreError, StoreEvent};
use kuma_cp::auth::{BoxError, DataplaneAuthenticator};
use kuma_cp::{Config, ControlPlane};
use kuma_dns::vips::{
    Allocation, HostnameEntry, OutboundEntry, VipAllocator, VipError, VipTable, VirtualOutbound,
};
use kuma_store::MemoryStore;
use kuma_testkit::{eventually, free_port};
use kuma_xds::generate::resources::{ClusterDraft, ClusterRole, ListenerDraft, Terminal};
use kuma_xds::generate::{GeneratorList, Protocol, ProxyContext, ResourceGenerator, ResourceSet};
use tokio::sync::broadcast;
use xds_server::envoy::{listener, static_cluster, tcp_proxy};

/// A [`MemoryStore`] that counts the operations going through it.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    operations: AtomicUsize,
}

impl CountingStore {
    fn count(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl ResourceStore for CountingStore {
    async fn create(
        &self,
        resource: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError> {
        self.count();
        self.inner.create(resource, owner).await
    }
    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        self.count();
        self.inner.update(resource).await
    }
    async fn delete(&self, key: &ResourceKey, version: Option<&Version>) -> Result<(), StoreError> {
        self.count();
        self.inner.delete(key, version).await
    }
    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError> {
        self.count();
        self.inner.get(key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.count();
        self.inner.list(query).await
    }
    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.watch()
    }
}

/// Gives `web` a listener of its own on `port`, proxying to `echo`.
struct ExtraListener {
    port: u16,
    echo: u16,
}

impl ResourceGenerator for ExtraListener {
    fn name(&self) -> &str {
        "extra-listener"
    }

    fn apply(&self, ctx: &ProxyContext<'_>, resources: &mut ResourceSet) -> Result<(), BoxError> {
        if ctx.name != "web" {
            return Ok(());
        }
        let endpoints = [("127.0.0.1".to_string(), u32::from(self.echo))];
        let cluster = static_cluster("extra-echo", &endpoints);
        resources.add_cluster(
            "extra-echo",
            ClusterDraft::new(cluster, ClusterRole::System, Protocol::Tcp),
        );
        let draft = ListenerDraft {
            listener: listener(
                "extra",
                "127.0.0.1",
                u32::from(self.port),
                TrafficDirection::Outbound,
            ),
            network_filters: Vec::new(),
            terminal: Terminal::Tcp(Box::new(tcp_proxy("extra", "extra-echo"))),
            tls: None,
        };
        resources.add_listener("extra", draft);
        Ok(())
    }
}

/// VIPs 241.9.0.1, 241.9.0.2, ... in hostname order.
struct CountingVips;

#[async_trait::async_trait]
impl VipAllocator for CountingVips {
    async fn allocate(
        &self,
        _mesh: &str,
        _previous: &VipTable,
        wanted: &BTreeMap<HostnameEntry, Vec<OutboundEntry>>,
    ) -> Result<Allocation, VipError> {
        let table = wanted
            .iter()
            .zip(1..)
            .map(|((hostname, outbounds), i)| {
                let vip = VirtualOutbound {
                    address: format!("241.9.0.{i}"),
                    outbounds: outbounds.clone(),
                };
                (hostname.clone(), vip)
            })
            .collect();
        Ok(Allocation {
            table,
            ..Allocation::default()
        })
    }
}

/// A CA made once per mesh in memory (a real backend would fetch it from its vault).
#[derive(Default)]
struct InMemoryCa {
    cas: std::sync::Mutex<BTreeMap<String, Arc<BuiltinCa>>>,
    loads: AtomicUsize,
}

#[async_trait::async_trait]
impl CaManager for InMemoryCa {
    fn validate_conf(
        &self,
        path: &kuma_core::validation::Path,
        conf: Option<&serde_json::Value>,
        err: &mut kuma_core::validation::ValidationError,
    ) {
        if conf.and_then(|c| c.get("vault")).is_none() {
            err.add(&path.field("vault"), "must be defined");
        }
    }

    async fn load(
        &self,
        _manager: &ResourceManager,
        mesh: &str,
        backend: &CaBackend,
        key_type: KeyType,
    ) -> Result<Arc<dyn CertificateAuthority>, MeshCaError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut cas = self.cas.lock().unwrap();
        if let Some(ca) = cas.get(mesh) {
            return Ok(ca.clone());
        }
        let ca = BuiltinCa::generate(mesh, key_type).map_err(|e| MeshCaError::Backend {
            mesh: mesh.into(),
            backend: backend.name.clone(),
            source: e.into(),
        })?;
        let ca = Arc::new(ca);
        cas.insert(mesh.into(), ca.clone());
        Ok(ca)
    }
}

/// Any proxy of mesh `default` presenting the secret.
struct SharedSecret(&'static str);

#[async_trait::async_trait]
impl DataplaneAuthenticator for SharedSecret {
    async fn verify(&self, credential: &str) -> Result<DataplaneIdentity, BoxError> {
        if credential.trim_start_matches("Bearer ") != self.0 {
            return Err("not the shared secret".into());
        }
        Ok(DataplaneIdentity {
            mesh: "default".into(),
            ..Default::default()
        })
    }
}

async fn apply(manager: &ResourceManager, yaml: &str) -> Result<(), String> {
    let resource = parse_yaml(yaml).map_err(|e| e.to_string())?;
    manager
        .apply(resource)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_extension_point_swapped_carries_traffic_through_envoy() {
    let mut config = Config::default();
    config.dp_server.port = free_port().await;
    config.api_server.http.port = free_port().await;
    config.api_server.https.enabled = false;
    config.monitoring_assignment_server.enabled = false;
    config.diagnostics.server_port = free_port().await;
    config.dns_server.port = free_port().await;
    let store = Arc::new(CountingStore::default());
    let cas = Arc::new(InMemoryCa::default());
    let (extra_port, extra_echo) = (free_port().await, kuma_testkit::echo_server("extra:").await);
    let hello = axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" }));
    let cp = ControlPlane::builder(config)
        .store(store.clone())
        .generator(GeneratorList::kuma_profile().with(ExtraListener {
            port: extra_port,
            echo: extra_echo,
        }))
        .vip_allocator(Arc::new(CountingVips))
        .ca_backend("in-memory", cas.clone())
        .dataplane_authenticator(Arc::new(SharedSecret("s3cret")))
        .routes(hello)
        .start()
        .await
        .expect("the control plane starts");
    let manager = cp.manager().clone();
    let api = cp.api_http_addr().unwrap().port();
    let dp_port = cp.dp_server_addr().unwrap().port();
    let ca = cp.ca_pem().to_string();

    // The added route is served beside the API, which still answers.
    let (status, raw) = kuma_testkit::http_get(api, "/hello").await;
    assert_eq!((status, kuma_testkit::response_body(&raw)), (200, "hi"));
    assert_eq!(kuma_testkit::http_get(api, "/meshes/default").await.0, 200);
    // The default mesh went into the test's store.
    let default = ResourceKey::global(ResourceType::Mesh, "default");
    assert!(store.inner.get(&default).await.is_ok());

    // The added CA type is accepted, its conf checked by its manager; others are refused
    // naming the types there are.
    let mesh = |kind: &str, conf: &str| {
        format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: {kind}\n{conf}"
        )
    };
    let e = apply(&manager, &mesh("in-memory", "")).await.unwrap_err();
    assert!(
        e.contains("mtls.backends[0].conf.vault: must be defined"),
        "{e}"
    );
    let e = apply(&manager, &mesh("vault", "")).await.unwrap_err();
    assert!(
        e.contains(r#"unknown backend type "vault". Available backends: "builtin", "provided", "in-memory""#),
        "{e}"
    );
    apply(&manager, &mesh("in-memory", "    conf: {vault: test}\n"))
        .await
        .unwrap();
    apply(
        &manager,
        "type: MeshTrafficPermission\nmesh: default\nname: allow-all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
    )
    .await
    .unwrap();

    // The authenticator decides who gets a bootstrap.
    let request = |secret: &str| {
        serde_json::json!({"mesh": "default", "name": "x", "dataplaneToken": secret,
            "dataplaneResource": dataplane("x", 1, 2, "s", None)})
        .to_string()
    };
    let (status, body) = post_bootstrap(dp_port, &ca, &request("wrong")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not the shared secret"), "{body}");

    let echo = kuma_testkit::echo_server("backend:").await;
    let (backend_in, web_out) = (free_port().await, free_port().await);
    let backend = dataplane("backend-1", backend_in, echo, "backend", None);
    let _backend = start_proxy(dp_port, &ca, "backend-1", &backend, "s3cret").await;
    let redirect = (free_port().await, free_port().await);
    let web = dataplane(
        "web",
        free_port().await,
        free_port().await,
        "web",
        Some((web_out, "backend")),
    ) + &format!(
        "  transparentProxying:\n    redirectPortInbound: {}\n    redirectPortOutbound: {}\n",
        redirect.0, redirect.1
    );
    let web = start_proxy(dp_port, &ca, "web", &web, "s3cret").await;

    // Mesh mTLS with certificates of the added CA: Envoy verifies them, traffic flows.
    eventually("traffic from web to backend over mTLS", || async {
        call(web_out).await.as_deref() == Some("backend")
    })
    .await;
    assert!(cas.loads.load(Ordering::Relaxed) > 0, "the added CA issued");
    // The added generator's listener carries traffic.
    eventually("traffic through the added listener", || async {
        call(extra_port).await.as_deref() == Some("extra")
    })
    .await;
    // The added allocator's VIP is backend's outbound address in web's Envoy.
    let admin = web.admin_port;
    eventually(
        "backend's VIP from the added allocator in web's Envoy",
        || async {
            let dump = kuma_testkit::http_get(admin, "/config_dump?resource=dynamic_listeners")
                .await
                .1;
            dump.contains("241.9.0.")
        },
    )
    .await;
    let operations = store.operations.load(Ordering::Relaxed);
    assert!(
        operations > 0,
        "the control plane went through the test's store"
    );
    cp.shutdown().await;
}
