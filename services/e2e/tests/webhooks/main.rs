//! End-to-end webhook scenarios against a real nats-server and real HTTP receivers.

mod crash;
mod delivery;
mod harness;
// The one system builder, shared with every suite.
use jetjobs_e2e::system as helpers;
mod ssrf;
mod tls;
