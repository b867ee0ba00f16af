//! The pure part of the upgrade: which survey is which generation, which pair is which plan.

use enforcer_common::{META_LAYOUT_VERSION, ObjectMeta};

use super::{Generation, Plan, Survey, plan};

fn meta(byte: u8, layout_version: u32) -> ObjectMeta {
    ObjectMeta {
        object_sha256: [byte; 32],
        layout_version,
        _pad: [0; 4],
    }
}

fn survey(links: usize, complete: bool, meta: Option<ObjectMeta>) -> Survey {
    Survey {
        exists: true,
        links,
        complete,
        meta,
    }
}

#[test]
fn surveys_classify_into_generations() {
    let ours = meta(1, META_LAYOUT_VERSION);
    let cases = [
        (
            Survey {
                exists: false,
                links: 0,
                complete: false,
                meta: None,
            },
            Generation::Absent,
        ),
        // A directory without links enforces nothing, whoever made it.
        (survey(0, false, None), Generation::Broken),
        (survey(0, false, Some(ours)), Generation::Broken),
        (survey(0, false, Some(meta(2, 1))), Generation::Broken),
        // Our own install cut short: reinstalled, not upgraded.
        (survey(5, false, Some(ours)), Generation::Broken),
        (survey(6, true, Some(ours)), Generation::Current),
        // An install older than META.
        (survey(6, true, None), Generation::Foreign),
        (survey(6, false, None), Generation::Foreign),
        // Another object, or the same hash under another layout version.
        (
            survey(6, true, Some(meta(2, META_LAYOUT_VERSION))),
            Generation::Foreign,
        ),
        (
            survey(6, true, Some(meta(1, META_LAYOUT_VERSION + 1))),
            Generation::Foreign,
        ),
        (survey(1, false, Some(meta(2, 1))), Generation::Foreign),
    ];
    for (survey, expected) in cases {
        assert_eq!(survey.generation(&ours), expected, "{survey:?}");
    }
}

#[test]
fn every_pair_of_generations_has_its_plan() {
    use Generation::{Absent, Broken, Current, Foreign};
    let expected = [
        (Absent, Absent, Plan::Install),
        (Absent, Broken, Plan::Install),
        (Absent, Foreign, Plan::Promote),
        (Absent, Current, Plan::Promote),
        (Broken, Absent, Plan::Install),
        (Broken, Broken, Plan::Install),
        (Broken, Foreign, Plan::Promote),
        (Broken, Current, Plan::Promote),
        (
            Foreign,
            Absent,
            Plan::Stage {
                discard_swap: false,
            },
        ),
        (Foreign, Broken, Plan::Stage { discard_swap: true }),
        (Foreign, Foreign, Plan::Stage { discard_swap: true }),
        (Foreign, Current, Plan::Resume),
        (
            Current,
            Absent,
            Plan::Adopt {
                discard_swap: false,
            },
        ),
        (Current, Broken, Plan::Adopt { discard_swap: true }),
        (Current, Foreign, Plan::AdoptAndRetire),
        (Current, Current, Plan::AdoptAndRetire),
    ];
    assert_eq!(expected.len(), 16);
    for (root, swap, want) in expected {
        assert_eq!(plan(root, swap), want, "root {root:?}, swap {swap:?}");
    }
}

#[test]
fn a_promoted_swap_directory_never_asks_for_another_promotion() {
    // After a promotion the swap directory is absent: whatever the root then holds, the next
    // plan acts on it.
    for root in [
        Generation::Absent,
        Generation::Broken,
        Generation::Foreign,
        Generation::Current,
    ] {
        assert_ne!(plan(root, Generation::Absent), Plan::Promote, "{root:?}");
    }
}
