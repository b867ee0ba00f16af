//! The pinned `META` map of a datapath, read and rewritten so that a test's own install looks
//! like another enforcer's (an upgrade from an older binary). Shared by the upgrade tests of
//! the standalone (`datapath_upgrade.rs`) and the cluster-mode agent (`cluster_mode.rs`).

use std::path::Path;

use aya::maps::{Array, Map, MapData};
use enforcer::datapath::pins;
use enforcer_common::{META_LAYOUT_VERSION, ObjectMeta};

pub fn meta_map(dir: &Path) -> Array<MapData, ObjectMeta> {
    let data = MapData::from_pin(pins::map(dir, pins::MAP_META)).expect("META pin");
    Map::from_map_data(data)
        .expect("META type")
        .try_into()
        .expect("META value type")
}

pub fn read_meta(dir: &Path) -> ObjectMeta {
    meta_map(dir).get(&0, 0).expect("read META")
}

/// An install of another object: same programs, another hash in `META`.
pub fn other_object(root: &Path) {
    let other = ObjectMeta {
        object_sha256: [0xaa; 32],
        layout_version: META_LAYOUT_VERSION,
        _pad: [0; 4],
    };
    meta_map(root).set(0, other, 0).expect("write META");
}
