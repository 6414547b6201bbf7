//! The data directory's identity: the cluster it belongs to, the node it is and its own id, in
//! Kafka's `meta.properties` (version 1, KRaft's form, with KIP-858's `directory.id`).
//!
//! Written at the directory's first start (its node and its own id) and again once the broker
//! learns its cluster's id (from its first registration), read at every start: a directory of
//! another node, or of another cluster, is refused with a message naming both, instead of
//! serving (or voting with) what another cluster wrote. The directory's id is on disk before the
//! broker first registers, so a restart is always recognised as the same broker.

use std::io::{self, Write};
use std::path::Path;

use super::metadata::{parse_uuid_text, uuid_text, ClusterId};
use crate::types::NodeId;

pub const IDENTITY_FILE: &str = "meta.properties";
const VERSION: &str = "1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirIdentity {
    /// `None` until the directory's broker first registered.
    pub cluster_id: Option<ClusterId>,
    pub node: NodeId,
    /// Random, chosen at the directory's first start: a broker registers with it, so the
    /// controller tells the same broker restarted from another claiming its node id.
    pub directory: u128,
}

/// The directory's identity; `None` for a directory that has none yet (new, or written by a
/// build before clusters). Blocking.
pub fn read(dir: &Path) -> Result<Option<DirIdentity>, String> {
    let path = dir.join(IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let named = |why: String| format!("{}: {why}", path.display());
    let mut fields = std::collections::BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.split_once('=').ok_or_else(|| named(format!("line {line:?}")))?;
        fields.insert(key.trim(), value.trim());
    }
    match fields.get("version") {
        Some(&VERSION) => {}
        other => return Err(named(format!("version {other:?}: this build reads {VERSION}"))),
    }
    let field = |key: &str| fields.get(key).copied().ok_or_else(|| named(format!("no {key}")));
    let cluster_id = match fields.get("cluster.id") {
        Some(text) => Some(text.parse().map_err(named)?),
        None => None,
    };
    let node = field("node.id")?.parse().map_err(|_| named("node.id is not a number".into()))?;
    let directory = parse_uuid_text(field("directory.id")?)
        .map_err(|why| named(format!("directory.id: {why}")))?;
    Ok(Some(DirIdentity { cluster_id, node: NodeId(node), directory }))
}

/// Writes the identity durably (a temporary file synced, renamed, the directory synced).
/// Blocking.
pub fn write(dir: &Path, identity: DirIdentity) -> io::Result<()> {
    let cluster = identity.cluster_id.map(|id| format!("cluster.id={id}\n")).unwrap_or_default();
    let text = format!(
        "#This data directory's node, its own id and (once it joined) its cluster, by spate\n\
         version={VERSION}\n{cluster}node.id={}\ndirectory.id={}\n",
        identity.node,
        uuid_text(identity.directory)
    );
    let (path, tmp) = (dir.join(IDENTITY_FILE), dir.join(format!("{IDENTITY_FILE}.tmp")));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Refuses a directory of another node.
pub fn check_node(dir: &Path, found: &DirIdentity, node: NodeId) -> Result<(), String> {
    if found.node == node {
        return Ok(());
    }
    let cluster = found.cluster_id.map(|id| format!(" of cluster {id}")).unwrap_or_default();
    Err(format!(
        "data directory {} belongs to node {}{cluster}, but node.id is {node}: give each node \
         its own data directory",
        dir.display(),
        found.node,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_reads_back_and_another_node_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()), Ok(None));
        // At first start: the node and the directory, no cluster yet.
        let first = DirIdentity { cluster_id: None, node: NodeId(3), directory: 42 };
        write(dir.path(), first).expect("write");
        assert_eq!(read(dir.path()), Ok(Some(first)));
        let identity = DirIdentity { cluster_id: Some(ClusterId(0x1234_5678)), ..first };
        write(dir.path(), identity).expect("write");
        assert_eq!(read(dir.path()), Ok(Some(identity)));
        assert!(check_node(dir.path(), &identity, NodeId(3)).is_ok());
        let refused = check_node(dir.path(), &identity, NodeId(4)).unwrap_err();
        assert!(refused.contains("belongs to node 3") && refused.contains("node.id is 4"));
        std::fs::write(dir.path().join(IDENTITY_FILE), "version=2\n").expect("rewrite");
        assert!(read(dir.path()).unwrap_err().contains("version"));
    }
}
