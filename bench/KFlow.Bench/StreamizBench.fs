// Baseline (d): Streamiz.Kafka.Net (a Kafka Streams port) running map → filter → peek over the
// input with its own application id, stopped when every message was peeked.
module KFlow.Bench.StreamizBench

open System
open Microsoft.Extensions.Logging.Abstractions
open Streamiz.Kafka.Net
open Streamiz.Kafka.Net.SerDes
open Streamiz.Kafka.Net.Processors
open KFlow.Testing
open KFlow.Bench.RuntimeInput

/// Stream threads. 1 (Streamiz's default): with 2 threads on this 2-core machine Streamiz stalled
/// in a rebalance between its own threads on the embedded cluster (no message in 5 minutes, 1 run
/// of 2), and MaxPollRecords 5,000 (default 500) or PollMs 10 (default 100) made it slower.
let threads = 1

/// Reads the whole input once with a fresh application id and the consumer settings of
/// `fetching`; returns messages/s (first to last).
let run (fetching: Fetching) (input: Input) =
    let config = StreamConfig<StringSerDes, ByteArraySerDes>()

    // The consumer settings every contender gets. Streamiz maps each key to a typed property:
    // numbers go in as numbers; auto.offset.reset is set below.
    for key, value in consumerSettings fetching do
        match Int32.TryParse value with
        | true, n -> config[key] <- box n
        | _ -> config[key] <- box value

    config.ApplicationId <- $"kflow-bench-streamiz-{Guid.NewGuid():N}"
    config.BootstrapServers <- input.BootstrapServers
    config.AutoOffsetReset <- Confluent.Kafka.AutoOffsetReset.Earliest
    config.NumStreamThreads <- threads
    config.Logger <- NullLoggerFactory.Instance
    let meter = Meter input.Messages
    let builder = StreamBuilder()

    builder
        .Stream<string, byte[]>(input.Topic)
        .MapValues(Func<byte[], IRecordContext, int64>(fun v _ -> map v))
        .Filter(Func<string, int64, IRecordContext, bool>(fun _ n _ -> keep n))
        .Peek(Action<string, int64, IRecordContext>(fun _ _ _ -> meter.Hit()))
    |> ignore

    use stream = new KafkaStream(builder.Build(), config)
    stream.StartAsync().Wait()
    meter.Wait(TimeSpan.FromMinutes 5.0, "Streamiz")
    printfn "  Streamiz wall time (start-up included): %.2f s" meter.WallSeconds
    meter.MessagesPerSecond
