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

/// Stream threads. The machine's core count (Streamiz default 1): its best showing here.
let threads = Environment.ProcessorCount

/// Reads the whole input once with a fresh application id; returns messages/s (first to last).
let run (input: Input) =
    let config = StreamConfig<StringSerDes, StringSerDes>()

    // The embedded cluster's fast consumer settings, as for every other contender. Streamiz maps
    // each key to a typed property: numbers go in as numbers; auto.offset.reset is set below.
    for setting in FastClientSettings.consumer do
        match Int32.TryParse setting.Value with
        | true, n -> config[setting.Key] <- box n
        | _ when setting.Key = "auto.offset.reset" -> ()
        | _ -> config[setting.Key] <- box setting.Value

    config.ApplicationId <- $"kflow-bench-streamiz-{Guid.NewGuid():N}"
    config.BootstrapServers <- input.BootstrapServers
    config.AutoOffsetReset <- Confluent.Kafka.AutoOffsetReset.Earliest
    config.NumStreamThreads <- threads
    config.Logger <- NullLoggerFactory.Instance
    let meter = Meter input.Messages
    let builder = StreamBuilder()

    builder
        .Stream<string, string>(input.Topic)
        .MapValues(Func<string, IRecordContext, int64>(fun v _ -> map v))
        .Filter(Func<string, int64, IRecordContext, bool>(fun _ n _ -> keep n))
        .Peek(Action<string, int64, IRecordContext>(fun _ _ _ -> meter.Hit()))
    |> ignore

    use stream = new KafkaStream(builder.Build(), config)
    stream.StartAsync().Wait()
    meter.Wait(TimeSpan.FromMinutes 5.0, "Streamiz")
    printfn "  Streamiz wall time (start-up included): %.2f s" meter.WallSeconds
    meter.MessagesPerSecond
