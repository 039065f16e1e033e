//! AFL++ binary of the `identity_mapping` target (see `keyward_fuzz::identity_mapping`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::identity_mapping::run(data));
}
