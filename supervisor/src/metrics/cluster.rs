//! Metrics of the cluster: the bus's frames and bytes, and, read at scrape time, the config
//! version this server has applied,
//! its bus links up, and per linked peer the config version that peer last announced over
//! the bus (it announces every version it applies, and its current one when the link comes
//! up) and how many versions it is behind this server. A peer is a server name: at most
//! three servers share a store. Boot registers [`ClusterState`] with readers of the node
//! state and the bus.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

/// The bus's traffic over every link (counted by `cluster::bus`); the rest of the cluster's
/// figures are a state, read at scrape time ([`ClusterState`]).
pub struct ClusterMetrics {
    /// Frames received and sent (after each link's handshake).
    pub frames_in: Counter,
    pub frames_out: Counter,
    /// Bytes received and sent (after each link's handshake).
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl ClusterMetrics {
    pub fn register(registry: &mut Registry) -> ClusterMetrics {
        let frames = Family::<Direction, Counter>::default();
        let bytes = Family::<Direction, Counter>::default();
        registry.register(
            "cluster_bus_frames",
            "Cluster bus frames over every link, by direction (in, out)",
            frames.clone(),
        );
        registry.register(
            "cluster_bus_bytes",
            "Cluster bus bytes over every link after its handshake, by direction (in, out)",
            bytes.clone(),
        );
        let (i, o) = (
            Direction { direction: "in" },
            Direction { direction: "out" },
        );
        ClusterMetrics {
            frames_in: frames.get_or_create_owned(&i),
            frames_out: frames.get_or_create_owned(&o),
            bytes_in: bytes.get_or_create_owned(&i),
            bytes_out: bytes.get_or_create_owned(&o),
        }
    }
}

/// A linked peer as the bus knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// The config version it last announced; `None` before its first announcement.
    pub version: Option<i64>,
}

/// Reads the cluster's state at scrape time.
pub struct ClusterState {
    /// The config version this server has applied.
    pub applied: Box<dyn Fn() -> i64 + Send + Sync>,
    /// The live bus links; `None` when this server runs no bus (SQLite, no cluster secret).
    pub peers: Option<Box<dyn Fn() -> Vec<Peer> + Send + Sync>>,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterState")
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ClusterState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let applied = (self.applied)();
        gauge(
            &mut encoder,
            "cluster_config_version_applied",
            "The config version this server has applied (runs).",
            applied,
        )?;
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        let mut peers = peers();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        gauge(
            &mut encoder,
            "cluster_bus_links_up",
            "Cluster bus links to other servers that are up now.",
            peers.len() as i64,
        )?;
        let known: Vec<(&str, i64)> = peers
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.version?)))
            .collect();
        let mut m = encoder.encode_descriptor(
            "cluster_peer_config_version",
            "The config version a linked peer last announced over the bus (it announces each one it applies).",
            None,
            MetricType::Gauge,
        )?;
        for (peer, v) in &known {
            ConstGauge::new(*v).encode(m.encode_family(&[("peer", *peer)])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "cluster_peer_lag_versions",
            "How many config versions a linked peer is behind this server (0 when it is level or ahead).",
            None,
            MetricType::Gauge,
        )?;
        for (peer, v) in &known {
            ConstGauge::new((applied - v).max(0)).encode(m.encode_family(&[("peer", *peer)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_shown_once_it_announced_and_its_lag_is_never_negative() {
        let m = crate::metrics::Metrics::new(true);
        m.register_collector(Box::new(ClusterState {
            applied: Box::new(|| 7),
            peers: Some(Box::new(|| {
                vec![
                    Peer {
                        name: "c".into(),
                        version: Some(9),
                    },
                    Peer {
                        name: "b".into(),
                        version: Some(5),
                    },
                    Peer {
                        name: "d".into(),
                        version: None,
                    },
                ]
            })),
        }));
        let page = m.render().unwrap();
        for line in [
            "oxbus_cluster_config_version_applied 7\n",
            "oxbus_cluster_bus_links_up 3\n",
            "oxbus_cluster_peer_config_version{peer=\"b\"} 5\n",
            "oxbus_cluster_peer_lag_versions{peer=\"b\"} 2\n",
            "oxbus_cluster_peer_lag_versions{peer=\"c\"} 0\n",
        ] {
            assert!(page.contains(line), "{line:?} not in\n{page}");
        }
        assert!(!page.contains("peer=\"d\""), "{page}");
    }

    #[test]
    fn without_a_bus_only_the_applied_version_is_shown() {
        let m = crate::metrics::Metrics::new(true);
        m.register_collector(Box::new(ClusterState {
            applied: Box::new(|| 3),
            peers: None,
        }));
        let page = m.render().unwrap();
        assert!(page.contains("oxbus_cluster_config_version_applied 3\n"));
        assert!(!page.contains("bus_links_up"), "{page}");
    }
}
