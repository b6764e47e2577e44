//! The connection to the counter store's Redis: the server a URL names, the master that Redis
//! Sentinel names — asked anew at every connection, checked with `ROLE` before the first
//! command, followed through a failover within the same call — or a Redis Cluster (the redis
//! crate's cluster client follows its redirections; `Keys` puts every key in one slot).
//!
//! Every connect and command has the store's timeout: a sentinel or master that drops packets
//! costs a sender `timeout_ms` per address, never the kernel's two minutes. During a failover
//! (the old master gone, a replica not yet promoted, a replica answering `READONLY`) a call
//! is retried against whatever the sentinels name next until `failover_wait_ms` has passed;
//! after that the caller's `on_unavailable` decides, as for a Redis that is down.

use crate::config::Store;
use crate::exit::{Exit, Failure};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    ConnectionAddr, ConnectionInfo, ConnectionLike, IntoConnectionInfo, RedisConnectionInfo, Value,
};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Where the master is.
enum Target {
    Direct(ConnectionInfo),
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        /// Database and credentials for the master the sentinels name.
        node: RedisConnectionInfo,
    },
    Cluster(ClusterClient),
}

/// An open connection: to one server, or to a Cluster.
enum Live {
    Single(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

impl Live {
    fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Live::Single(c) => c,
            Live::Cluster(c) => c.as_mut(),
        }
    }
}

pub struct RedisConn {
    target: Target,
    /// The CA (PEM) that signs the servers' certificates, for TLS addresses.
    tls_ca: Option<Vec<u8>>,
    /// With sentinels: whether the master speaks TLS (`url` is `rediss://`).
    master_tls: bool,
    timeout: Duration,
    failover_wait: Duration,
    conn: RefCell<Option<Live>>,
}

/// The first line of a secret file, without its line end.
fn read_secret(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::io(Exit::Config, format!("cannot read {}", path.display()), &e))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// `host:port` or a `redis://` URL.
fn parse_address(text: &str, what: &str) -> Result<ConnectionInfo, Failure> {
    let url = if text.contains("://") {
        text.to_string()
    } else {
        format!("redis://{text}")
    };
    url.as_str()
        .into_connection_info()
        .map_err(|e| Failure::new(Exit::Config, format!("[store] {what} {text:?}: {e}")))
}

impl RedisConn {
    pub fn new(store: &Store) -> Result<RedisConn, Failure> {
        let password = store
            .password_file
            .as_deref()
            .map(read_secret)
            .transpose()?;
        let with_credentials = |mut r: RedisConnectionInfo| {
            if let Some(user) = &store.username {
                r = r.set_username(user);
            }
            if let Some(p) = &password {
                r = r.set_password(p);
            }
            // No CLIENT SETINFO after each connect: one process per message.
            r.set_skip_set_lib_name()
        };
        let tls_ca = match &store.tls_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                Failure::io(Exit::Config, format!("cannot read {}", path.display()), &e)
            })?),
            None => None,
        };
        let timeout = Duration::from_millis(store.timeout_ms.max(1));
        let target = if !store.cluster.is_empty() {
            if !store.sentinels.is_empty() {
                return Err(Failure::new(
                    Exit::Config,
                    "[store] cluster and sentinels exclude each other (a Cluster fails over by itself)",
                ));
            }
            let nodes = store
                .cluster
                .iter()
                .map(|n| parse_address(n, "cluster"))
                .collect::<Result<Vec<_>, Failure>>()?;
            let tls = nodes
                .iter()
                .any(|n| matches!(n.addr(), ConnectionAddr::TcpTls { .. }));
            let mut builder = ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout);
            if let Some(user) = &store.username {
                builder = builder.username(user);
            }
            if let Some(p) = &password {
                builder = builder.password(p);
            }
            if tls {
                builder = builder.tls(redis::TlsMode::Secure);
                if let Some(ca) = &tls_ca {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    });
                }
            }
            let client = builder
                .build()
                .map_err(|e| Failure::new(Exit::Config, format!("[store] cluster: {e}")))?;
            Target::Cluster(client)
        } else if store.sentinels.is_empty() {
            let info = parse_address(&store.url, "url")?;
            let redis = with_credentials(info.redis_settings().clone());
            Target::Direct(info.set_redis_settings(redis))
        } else {
            if store.master_name.is_empty() {
                return Err(Failure::new(
                    Exit::Config,
                    "[store] sentinels needs master_name (the name the sentinels monitor)",
                ));
            }
            let sentinel_password = store
                .sentinel_password_file
                .as_deref()
                .map(read_secret)
                .transpose()?;
            let sentinels = store
                .sentinels
                .iter()
                .map(|s| {
                    let info = parse_address(s, "sentinels")?;
                    let mut r = info.redis_settings().clone().set_skip_set_lib_name();
                    if let Some(p) = &sentinel_password {
                        r = r.set_password(p);
                    }
                    Ok(info.set_redis_settings(r))
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            let db = parse_address(&store.url, "url")?.redis_settings().db();
            Target::Sentinel {
                sentinels,
                master: store.master_name.clone(),
                node: with_credentials(RedisConnectionInfo::default().set_db(db)),
            }
        };
        Ok(RedisConn {
            target,
            tls_ca,
            master_tls: store.url.starts_with("rediss://"),
            timeout,
            failover_wait: Duration::from_millis(store.failover_wait_ms),
            conn: RefCell::new(None),
        })
    }

    /// What the log and check-config call the store.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Direct(info) => format!("redis {}", info.addr()),
            Target::Sentinel {
                sentinels, master, ..
            } => format!("master {master:?} of {} sentinels", sentinels.len()),
            Target::Cluster(_) => "cluster".to_string(),
        }
    }

    /// With sentinels, the master they name now (check-config).
    pub fn sentinel_master(&self) -> Option<Result<(String, u16), String>> {
        matches!(self.target, Target::Sentinel { .. }).then(|| self.ask_sentinels())
    }

    /// ", over TLS (certificate verified)" and " as user NAME", as they apply.
    pub fn user_note(&self) -> String {
        let (user, tls) = match &self.target {
            Target::Direct(info) => (
                info.redis_settings().username(),
                matches!(info.addr(), ConnectionAddr::TcpTls { .. }),
            ),
            Target::Sentinel { node, .. } => (node.username(), self.master_tls),
            Target::Cluster(_) => (None, false),
        };
        let mut note = String::new();
        if tls {
            note.push_str(" over TLS (certificate verified)");
        }
        if let Some(u) = user {
            note.push_str(&format!(" as user {u:?}"));
        }
        note
    }

    fn open(&self, info: &ConnectionInfo) -> redis::RedisResult<redis::Connection> {
        let client = match (info.addr(), &self.tls_ca) {
            (ConnectionAddr::TcpTls { .. }, Some(ca)) => redis::Client::build_with_tls(
                info.clone(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
            _ => redis::Client::open(info.clone())?,
        };
        let conn = client.get_connection_with_timeout(self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok(conn)
    }

    /// The master's address as the first sentinel that answers names it.
    fn ask_sentinels(&self) -> Result<(String, u16), String> {
        let Target::Sentinel {
            sentinels, master, ..
        } = &self.target
        else {
            return Err("no sentinels configured".into());
        };
        let mut why = Vec::new();
        for sentinel in sentinels {
            let answer = self.open(sentinel).and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query::<Option<(String, u16)>>(&mut c)
            });
            match answer {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => why.push(format!("{} knows no master {master:?}", sentinel.addr())),
                Err(e) => why.push(format!("{}: {e}", sentinel.addr())),
            }
        }
        Err(format!("no sentinel named a master: {}", why.join("; ")))
    }

    /// A fresh connection to the master: the URL's server, or the one the sentinels name if
    /// it says it is the master (a replica is never written to). The error says whether a
    /// failover may explain it (no master named yet, the named one unreachable or still a
    /// replica) or not (a wrong password stays wrong).
    fn connect(&self) -> Result<Live, (String, bool)> {
        match &self.target {
            Target::Direct(info) => self
                .open(info)
                .map(Live::Single)
                .map_err(|e| (format!("counter store {}: {e}", info.addr()), false)),
            Target::Cluster(client) => client
                .get_connection()
                .map(|c| Live::Cluster(Box::new(c)))
                .map_err(|e| {
                    let retry = Self::is_failover(&e);
                    (format!("counter store cluster: {e}"), retry)
                }),
            Target::Sentinel { node, .. } => {
                let (host, port) = self.ask_sentinels().map_err(|why| (why, true))?;
                let failed = |e: redis::RedisError| {
                    let retry = Self::is_failover(&e);
                    (format!("counter store master {host}:{port}: {e}"), retry)
                };
                let addr = if self.master_tls {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), port)
                };
                let info = addr
                    .into_connection_info()
                    .map_err(failed)?
                    .set_redis_settings(node.clone());
                let mut conn = self.open(&info).map_err(failed)?;
                let role: Vec<Value> = redis::cmd("ROLE").query(&mut conn).map_err(failed)?;
                match role.first() {
                    Some(Value::BulkString(r)) if r == b"master" => Ok(Live::Single(conn)),
                    _ => Err((
                        format!(
                            "counter store {host}:{port} is not a master (yet): a failover is under way"
                        ),
                        true,
                    )),
                }
            }
        }
    }

    /// Whether an error may go away when the sentinels name another master.
    fn is_failover(e: &redis::RedisError) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::ReadOnly
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                )
            )
    }

    /// Run `f` on the (lazily opened) connection. Any error drops the connection; with
    /// sentinels, an error a failover explains is retried against the master they name next
    /// until `failover_wait` has passed. `f` must be safe to repeat: the counting script is
    /// (its call token makes a repeat return the first answer).
    pub fn run<T>(
        &self,
        mut f: impl FnMut(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let follow = !matches!(self.target, Target::Direct(_));
        let mut since: Option<Instant> = None;
        loop {
            let outcome = self.try_once(&mut f);
            let retry = match &outcome {
                Ok(_) => return outcome.map_err(|(why, _)| why),
                Err((_, retry)) => follow && *retry,
            };
            let started = *since.get_or_insert_with(Instant::now);
            if !retry || started.elapsed() >= self.failover_wait {
                return outcome.map_err(|(why, _)| why);
            }
            // The sentinels need a moment to agree on a new master; ask again soon.
            std::thread::sleep(Duration::from_millis(100).min(self.failover_wait));
        }
    }

    /// Run `f` once, for a call that must not be repeated: an error is the answer.
    pub fn run_once<T>(
        &self,
        mut f: impl FnMut(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        self.try_once(&mut f).map_err(|(why, _)| why)
    }

    /// One attempt: the result, or why it failed and whether a failover may explain it.
    fn try_once<T>(
        &self,
        f: &mut impl FnMut(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, (String, bool)> {
        let mut slot = self.conn.borrow_mut();
        if slot.is_none() {
            *slot = Some(self.connect()?);
        }
        let conn = slot.as_mut().expect("connected above");
        f(conn.as_dyn()).map_err(|e| {
            *slot = None;
            (format!("counter store: {e}"), Self::is_failover(&e))
        })
    }

    /// Every key matching `pattern`: SCAN on the one server, or on the Cluster node that
    /// holds the pattern's slot (mailgate's keys share one hash tag, and so does the pattern).
    pub fn scan(&self, pattern: &str) -> Result<Vec<String>, String> {
        let cluster = matches!(self.target, Target::Cluster(_));
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500);
            let (next, batch): (u64, Vec<String>) = if cluster {
                let mut slot = self.conn.borrow_mut();
                if slot.is_none() {
                    *slot = Some(self.connect().map_err(|(why, _)| why)?);
                }
                let Some(Live::Cluster(c)) = slot.as_mut() else {
                    unreachable!("a cluster target opens a cluster connection")
                };
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(pattern, SlotAddr::Master),
                ));
                let value = c.route_command(&cmd, routing).map_err(|e| {
                    *slot = None;
                    format!("counter store: {e}")
                })?;
                redis::from_redis_value(value).map_err(|e| format!("counter store: {e}"))?
            } else {
                self.run(|c| cmd.query(c))?
            };
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}
