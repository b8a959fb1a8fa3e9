//! Hosts of a test's own: network namespaces joined by veth pairs, with addresses that exist
//! only inside them (needs root and iproute2).

use std::fs::File;
use std::process::{Command, Output};

/// The control plane's host in a [`Lab`].
pub const CP_IP: &str = "10.77.0.1";
/// The other host in a [`Lab`].
pub const REMOTE_IP: &str = "10.77.0.2";

/// A network namespace of the test's own, with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (an old one of that name is replaced).
    pub fn create(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        run("ip", &["-n", name, "link", "set", "lo", "up"]);
        Netns {
            name: name.to_string(),
        }
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec: {e}"))
    }

    /// Moves the calling thread into the namespace: the sockets it opens, and the threads and
    /// processes it starts from then on, live there.
    pub fn enter(&self) {
        let file = File::open(format!("/run/netns/{}", self.name)).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the test's network namespace");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two hosts on one link: the control plane's ([`CP_IP`]) and a remote one ([`REMOTE_IP`]),
/// which reaches the control plane as any remote client does (not from localhost).
pub struct Lab {
    pub cp: Netns,
    pub remote: Netns,
}

impl Lab {
    /// Creates both namespaces, named after `tag` and this process, and the link.
    pub fn create(tag: &str) -> Lab {
        let id = std::process::id();
        let cp = Netns::create(&format!("kcp-{tag}-{id}"));
        let remote = Netns::create(&format!("krm-{tag}-{id}"));
        run(
            "ip",
            &[
                "-n",
                &cp.name,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &remote.name,
            ],
        );
        for (ns, ip) in [(&cp, CP_IP), (&remote, REMOTE_IP)] {
            run(
                "ip",
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["-n", &ns.name, "link", "set", "eth0", "up"]);
        }
        Lab { cp, remote }
    }
}

impl Lab {
    /// Moves the calling thread onto the control plane's host and returns a runtime whose
    /// threads live there too: what it starts (`standalone`, clients of `127.0.0.1`) runs
    /// on that host.
    pub fn enter_cp(&self) -> tokio::runtime::Runtime {
        self.cp.enter();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Runs `work` on the remote host: a thread of its own inside the remote namespace, with a
    /// runtime of its own. Await [`join`] on the handle for its result.
    pub fn on_remote<F, Fut, T>(&self, work: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let name = self.remote.name.clone();
        std::thread::spawn(move || {
            let file = File::open(format!("/run/netns/{name}")).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(work())
        })
    }

    /// One HTTP/1.1 request from the remote host to the control plane's `port` (plain
    /// HTTP): (status, raw response).
    pub async fn remote_request(
        &self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        join(self.on_remote(move || async move {
            let tcp = tokio::net::TcpStream::connect((CP_IP, port)).await.unwrap();
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            kuma_testkit::http_request(tcp, &method, &path, &headers, &body).await
        }))
        .await
    }
}

/// Waits for a thread started by [`Lab::on_remote`] without blocking the runtime.
pub async fn join<T: Send + 'static>(handle: std::thread::JoinHandle<T>) -> T {
    tokio::task::spawn_blocking(move || handle.join().unwrap())
        .await
        .unwrap()
}

/// Runs a set-up command, which must succeed.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {} (the test needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
