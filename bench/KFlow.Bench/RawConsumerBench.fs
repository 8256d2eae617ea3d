// Baseline (a): the plainest correct Confluent.Kafka loop over the input: consume, run the same map
// and filter as the pipes, store the offset, auto-commit on an interval. The ceiling for KFlow.
module KFlow.Bench.RawConsumerBench

open System
open Confluent.Kafka
open KFlow.Testing
open KFlow.Bench.RuntimeInput

/// Auto-commit interval of the raw loop. 1 s (librdkafka default 5 s).
let commitInterval = TimeSpan.FromSeconds 1.0

/// Reads the whole input once with a fresh group and the consumer settings of `fetching`; returns
/// messages/s (first to last message).
let run (fetching: Fetching) (input: Input) =
    let config =
        FastClientSettings.consumerConfig $"kflow-bench-raw-{Guid.NewGuid():N}" input.BootstrapServers

    for key, value in consumerSettings fetching do
        config.Set(key, value)

    config.EnableAutoOffsetStore <- false
    config.EnableAutoCommit <- true
    config.AutoCommitIntervalMs <- int commitInterval.TotalMilliseconds
    use consumer = ConsumerBuilder<Ignore, byte[]>(config).Build()
    let meter = Meter input.Messages

    let mutable pending =
        input.EndOffsets |> Array.filter (fun e -> e > 0L) |> Array.length

    let reached = input.EndOffsets |> Array.map (fun e -> e = 0L)
    let mutable kept = 0L
    consumer.Subscribe input.Topic
    let deadline = DateTime.UtcNow + TimeSpan.FromMinutes 5.0

    while pending > 0 do
        if DateTime.UtcNow > deadline then
            failwithf "Raw consumer: %d partitions not read to their end within 5 minutes." pending

        match consumer.Consume(TimeSpan.FromMilliseconds 100.0) with
        | null -> ()
        | result ->
            if keep (map result.Message.Value) then
                kept <- kept + 1L

            consumer.StoreOffset result
            meter.Hit()
            let p = result.Partition.Value

            if not reached[p] && result.Offset.Value + 1L >= input.EndOffsets[p] then
                reached[p] <- true
                pending <- pending - 1

    consumer.Close()

    if kept <> int64 input.Messages then
        failwithf "Raw consumer: kept %d of %d messages." kept input.Messages

    printfn "  raw wall time (start-up included): %.2f s" meter.WallSeconds
    meter.MessagesPerSecond
