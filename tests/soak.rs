//! The short soak: 15 s at 100 events/s against a receiver that fails 30 % of requests,
//! times out 5 % and resets 5 % of connections. Every event must land and the backlog
//! drain. (`waas soak` runs the 10-minute version.)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_through_a_hostile_receiver() {
    waas::soak::run(waas::soak::SoakArgs {
        seconds: 15,
        rate: 100,
        drain_seconds: 90,
    })
    .await
    .expect("the soak delivers everything");
}
