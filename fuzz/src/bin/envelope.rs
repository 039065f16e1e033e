//! AFL++ binary of the `envelope` target (see `keyward_fuzz::envelope`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::envelope::run(data));
}
