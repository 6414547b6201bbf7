//! The data directory's identity: the cluster it belongs to, the node it is and its own id, in
//! Kafka's `meta.properties` (version 1, KRaft's form, with KIP-858's `directory.id`).
//!
//! Written once the broker learns its cluster's id (from its registration), read at every
//! start: a directory of another node, or of another cluster, is refused with a message naming
//! both, instead of serving (or voting with) what another cluster wrote.

use std::io::{self, Write};
use std::path::Path;

use super::metadata::{parse_uuid_text, uuid_text, ClusterId};
use crate::types::NodeId;

pub const IDENTITY_FILE: &str = "meta.properties";
const VERSION: &str = "1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirIdentity {
    pub cluster_id: ClusterId,
    pub node: NodeId,
    /// Random, chosen when the directory first joined: a broker registers with it, so the
    /// controller tells the same broker restarted from another claiming its node id.
    pub directory: u128,
}

/// The directory's identity; `None` for a directory that never joined a cluster (new, or
/// written by a build before clusters). Blocking.
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
    let cluster_id = field("cluster.id")?.parse().map_err(named)?;
    let node = field("node.id")?.parse().map_err(|_| named("node.id is not a number".into()))?;
    let directory = parse_uuid_text(field("directory.id")?)
        .map_err(|why| named(format!("directory.id: {why}")))?;
    Ok(Some(DirIdentity { cluster_id, node: NodeId(node), directory }))
}

/// Writes the identity durably (a temporary file synced, renamed, the directory synced).
/// Blocking.
pub fn write(dir: &Path, identity: DirIdentity) -> io::Result<()> {
    let text = format!(
        "#The cluster this data directory belongs to, written by spate when it joined\n\
         version={VERSION}\ncluster.id={}\nnode.id={}\ndirectory.id={}\n",
        identity.cluster_id,
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
    Err(format!(
        "data directory {} belongs to node {} of cluster {}, but node.id is {node}: give each \
         node its own data directory",
        dir.display(),
        found.node,
        found.cluster_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_reads_back_and_another_node_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()), Ok(None));
        let identity =
            DirIdentity { cluster_id: ClusterId(0x1234_5678), node: NodeId(3), directory: 42 };
        write(dir.path(), identity).expect("write");
        assert_eq!(read(dir.path()), Ok(Some(identity)));
        assert!(check_node(dir.path(), &identity, NodeId(3)).is_ok());
        let refused = check_node(dir.path(), &identity, NodeId(4)).unwrap_err();
        assert!(refused.contains("belongs to node 3") && refused.contains("node.id is 4"));
        std::fs::write(dir.path().join(IDENTITY_FILE), "version=2\n").expect("rewrite");
        assert!(read(dir.path()).unwrap_err().contains("version"));
    }
}
