// KFlow's turnkey retransmit workflow: copy one topic to another (optionally re-keyed) through the
// Kafka sink, so each source offset is committed only once its copy has a successful delivery report.
namespace KFlow.Kafka

open System
open System.Threading.Tasks
open Confluent.Kafka
open KFlow

/// The settings of a retransmit workflow. Build them with `Retransmit.options` and `{ o with … }`.
[<NoEquality; NoComparison>]
type RetransmitOptions = {
    /// The source: workflow options (bootstrap servers, topics, group, …). Required.
    Source: WorkflowOptions
    /// The producer settings for the target (bootstrap.servers, TLS, SASL, …); enable.idempotence
    /// is set to true unless given. Default: the source's bootstrap servers.
    Producer: ProducerConfig
    /// The topic to copy to. Required.
    TargetTopic: string
    /// The key of each copy from the source message's key and value. Default: the source key
    /// (a null source key is copied as an empty key; headers are not copied: the runtime does
    /// not read them yet).
    Rekey: string -> byte[] -> string
    /// Copies produced per batch: a batch goes out when it is full or its oldest copy has waited
    /// BatchAge. Default 500.
    BatchSize: int
    /// How long a copy may wait for its batch to fill. Default 100 ms.
    BatchAge: TimeSpan
}

/// A running retransmit workflow. Disposing it stops the workflow gracefully, then the producer.
[<Sealed>]
type RetransmitHandle internal (workflow: WorkflowHandle, sink: IDisposable) =
    /// The workflow copying the messages (its Completion, Stats).
    member _.Workflow = workflow

    /// Stops the workflow gracefully (final commit of what was delivered), then closes the producer.
    member _.StopAsync() : Task = task {
        do! workflow.StopAsync()
        sink.Dispose()
    }

    interface IAsyncDisposable with
        member this.DisposeAsync() = ValueTask(this.StopAsync())

/// Copying a topic to another.
[<RequireQualifiedAccess>]
module Retransmit =
    /// Options copying the source workflow's topics to targetTopic, with every default.
    let options (source: WorkflowOptions) (targetTopic: string) = {
        Source = source
        Producer = ProducerConfig(BootstrapServers = source.BootstrapServers)
        TargetTopic = targetTopic
        Rekey = fun key _ -> key
        BatchSize = 500
        BatchAge = TimeSpan.FromMilliseconds 100.
    }

    /// The pipe of a retransmit workflow writing through `sink`: (key, value) copies in batches.
    let pipe (options: RetransmitOptions) (sink: KafkaSink<string * byte[], string, byte[]>) =
        Pipe.source<byte[]>
        |> Pipe.mapEnvelope (fun e -> options.Rekey e.Key e.Value, e.Value)
        |> Pipe.aggregate (
            Buffer.create {
                Buffer.options with
                    MaxCount = Some options.BatchSize
                    MaxAge = Some options.BatchAge
            }
        )
        |> Pipe.sink "retransmit" (KafkaSink.produce sink)

    /// Starts copying; ArgumentException naming the setting on invalid options.
    let run (options: RetransmitOptions) =
        if options.BatchSize < 1 then
            raise (ArgumentException("RetransmitOptions.BatchSize must be ≥ 1.", "BatchSize"))

        if options.BatchAge <= TimeSpan.Zero then
            raise (ArgumentException("RetransmitOptions.BatchAge must be > 0.", "BatchAge"))

        if isNull (box options.Rekey) then
            raise (ArgumentException("RetransmitOptions.Rekey must be a function, not null.", "Rekey"))

        let sink =
            KafkaSink.create {
                KafkaSinkOptions.create "" options.TargetTopic fst snd with
                    Producer = options.Producer
            }

        try
            RetransmitHandle(Workflow.run options.Source (pipe options sink), sink)
        with _ ->
            sink.Dispose()
            reraise ()
