//! AFL++ binary of the `audit_export` target (see `keyward_fuzz::audit_export`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::audit_export::run(data));
}
