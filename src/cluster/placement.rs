//! Where a new topic's replicas go, as Kafka's `AdminUtils.assignReplicasToBrokers` places them.
//!
//! Brokers are listed alternating racks (the first broker of each rack, then the second of
//! each, ...). Partition `p`'s first replica, its preferred leader, is the list's
//! `(start + p)`th broker, so leaders spread evenly and each topic starts at another broker.
//! Followers come at a shift from it that changes once per round of brokers, so that the
//! replicas of one broker's partitions do not all land on the same neighbours; with racks, a
//! follower skips brokers whose rack already holds a replica of the partition until every rack
//! holds one.

use crate::types::NodeId;

/// A live broker that may receive replicas.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub node: NodeId,
    pub rack: Option<String>,
}

/// The replicas of `partitions` partitions, `replication_factor` each on distinct brokers, the
/// preferred leader first; `start` turns where the first partition's leader goes (the caller
/// varies it per topic). `None` when there are fewer brokers than the replication factor.
pub fn place(
    brokers: &[Candidate],
    partitions: u32,
    replication_factor: usize,
    start: usize,
) -> Option<Vec<Vec<NodeId>>> {
    let n = brokers.len();
    if replication_factor == 0 || replication_factor > n {
        return None;
    }
    let list = rack_alternated(brokers);
    let racks = {
        let mut racks: Vec<&Option<String>> = list.iter().map(|b| &b.rack).collect();
        racks.sort();
        racks.dedup();
        racks.len()
    };
    let mut shift = start % n;
    let mut placed = Vec::with_capacity(partitions as usize);
    for p in 0..partitions as usize {
        if p > 0 && p % n == 0 {
            shift += 1;
        }
        let first = (start + p) % n;
        let mut replicas = vec![list[first].node];
        let mut racks_used = vec![&list[first].rack];
        let mut j = 0;
        while replicas.len() < replication_factor {
            // Kafka's replicaIndex: never `first` itself, and distinct for j < n - 1.
            let at = (first + 1 + (shift + j) % (n - 1).max(1)) % n;
            j += 1;
            let candidate = &list[at];
            let rack_taken = racks_used.contains(&&candidate.rack) && racks_used.len() < racks;
            // Every candidate is tried once under the rack rule before it is relaxed.
            if replicas.contains(&candidate.node) || (rack_taken && j < n) {
                continue;
            }
            replicas.push(candidate.node);
            racks_used.push(&candidate.rack);
        }
        placed.push(replicas);
    }
    Some(placed)
}

/// The brokers in node order within each rack, taking one per rack in turn.
fn rack_alternated(brokers: &[Candidate]) -> Vec<Candidate> {
    let mut by_rack: std::collections::BTreeMap<&Option<String>, Vec<&Candidate>> =
        std::collections::BTreeMap::new();
    for broker in brokers {
        by_rack.entry(&broker.rack).or_default().push(broker);
    }
    by_rack.values_mut().for_each(|rack| rack.sort_by_key(|b| b.node));
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut list = Vec::with_capacity(brokers.len());
    for round in 0..deepest {
        list.extend(by_rack.values().filter_map(|rack| rack.get(round)).map(|b| (*b).clone()));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(racks: &[Option<&str>]) -> Vec<Candidate> {
        let rack = |r: &Option<&str>| r.map(str::to_string);
        let node = |i: usize| NodeId(i as i32 + 1);
        racks.iter().enumerate().map(|(i, r)| Candidate { node: node(i), rack: rack(r) }).collect()
    }

    #[test]
    fn replicas_are_distinct_and_leaders_spread_evenly() {
        let five = brokers(&[None; 5]);
        for rf in 1..=5 {
            for start in 0..7 {
                let placed = place(&five, 20, rf, start).expect("placed");
                let mut leaders = [0; 5];
                for replicas in &placed {
                    let mut distinct = replicas.clone();
                    distinct.sort();
                    distinct.dedup();
                    assert_eq!(distinct.len(), rf, "rf {rf} start {start}: {replicas:?}");
                    leaders[(replicas[0].0 - 1) as usize] += 1;
                }
                assert_eq!(leaders, [4; 5], "rf {rf} start {start}");
            }
        }
    }

    #[test]
    fn more_replicas_than_brokers_is_refused() {
        assert!(place(&brokers(&[None; 2]), 3, 3, 0).is_none());
        assert!(place(&brokers(&[None; 2]), 3, 0, 0).is_none());
    }

    #[test]
    fn replicas_spread_over_racks_while_racks_remain() {
        let racked = brokers(&[Some("a"), Some("a"), Some("b"), Some("b"), Some("c"), Some("c")]);
        let rack_of = |node: NodeId| racked.iter().find(|b| b.node == node).map(|b| &b.rack);
        for start in 0..6 {
            for replicas in place(&racked, 12, 3, start).expect("placed") {
                let mut racks: Vec<_> = replicas.iter().map(|r| rack_of(*r)).collect();
                racks.sort();
                racks.dedup();
                assert_eq!(racks.len(), 3, "start {start}: {replicas:?} share a rack");
            }
        }
        // Four replicas on three racks: every rack used, then a second broker of one.
        for replicas in place(&racked, 6, 4, 1).expect("placed") {
            let mut racks: Vec<_> = replicas.iter().map(|r| rack_of(*r)).collect();
            racks.sort();
            racks.dedup();
            assert_eq!((replicas.len(), racks.len()), (4, 3), "{replicas:?}");
        }
    }
}
