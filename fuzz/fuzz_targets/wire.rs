//! Feeds arbitrary bytes to the wire decoder, as a broker would hand them to a consumer.
//!
//! Anyone on the LAN can publish to a queue, so `wire::decode` must return an error, never
//! panic, whatever arrives. Besides not crashing, the target checks that a decoded envelope
//! is of the supported version and survives a re-encode unchanged.

#![no_main]

use kraken_core::wire::{
    self, DeploymentMessage, Envelope, LogMessage, Message, PlatformMessage, SysinfoMessage,
    WorkRequestMessage,
};
use libfuzzer_sys::fuzz_target;

fn check<M: Message + PartialEq>(data: &[u8]) {
    if let Ok(envelope) = wire::decode::<M>(data) {
        assert_eq!(envelope.version, wire::FORMAT_VERSION);
        if let Ok(bytes) = wire::encode(&envelope) {
            let back: Envelope<M> = wire::decode(&bytes).expect("what was encoded decodes");
            assert_eq!(back, envelope);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<SysinfoMessage>(data);
    check::<DeploymentMessage>(data);
    check::<LogMessage>(data);
    check::<WorkRequestMessage>(data);
    check::<PlatformMessage>(data);
});
