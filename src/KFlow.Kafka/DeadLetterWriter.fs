// Dead-lettering: the headers that describe a failure (pure) and the producer that writes the
// original message with them to the dead-letter topic, acknowledged before the offset completes.
namespace KFlow.Kafka

open System
open System.Text
open System.Threading.Tasks
open Confluent.Kafka

/// The headers added to a dead-lettered message (after the original message's own headers).
[<RequireQualifiedAccess>]
module DeadLetterHeaders =
    /// The source topic.
    [<Literal>]
    let Topic = "kflow.source.topic"

    /// The source partition (decimal).
    [<Literal>]
    let Partition = "kflow.source.partition"

    /// The source offset (decimal).
    [<Literal>]
    let Offset = "kflow.source.offset"

    /// The stage, sink or async map that failed.
    [<Literal>]
    let Stage = "kflow.stage"

    /// The exception's type (full name).
    [<Literal>]
    let ErrorType = "kflow.error.type"

    /// The exception's message.
    [<Literal>]
    let ErrorMessage = "kflow.error.message"

    /// How many times the step was tried (decimal).
    [<Literal>]
    let Attempts = "kflow.attempts"

    /// When the message was dead-lettered (ISO 8601, UTC).
    [<Literal>]
    let Timestamp = "kflow.timestamp"

    /// The failure headers, as (name, UTF-8 value) pairs, in the order above.
    let create
        (topic: string)
        (partition: int)
        (offset: int64)
        (stage: string)
        (error: exn)
        (attempts: int)
        (at: DateTimeOffset)
        =
        let utf8 (s: string) =
            Encoding.UTF8.GetBytes(if isNull s then "" else s)

        [
            Topic, utf8 topic
            Partition, utf8 (string partition)
            Offset, utf8 (string offset)
            Stage, utf8 stage
            ErrorType, utf8 (error.GetType().FullName)
            ErrorMessage, utf8 error.Message
            Attempts, utf8 (string attempts)
            Timestamp, utf8 (at.UtcDateTime.ToString("O"))
        ]

/// Writes failed messages to dead-letter topics (one idempotent producer per workflow, acks=all).
[<Sealed>]
type internal DeadLetterWriter(options: WorkflowOptions) =
    let config =
        let c = ProducerConfig()
        // The pass-through properties carry TLS/SASL; consumer-only ones are ignored by the producer.
        for key, value in options.Properties do
            c.Set(key, value)

        c.BootstrapServers <- options.BootstrapServers
        c.ClientId <- $"{options.Name}-dead-letter"
        c.EnableIdempotence <- true
        c.Acks <- Acks.All
        c

    let producer =
        ProducerBuilder<byte[], byte[]>(config)
            .SetLogHandler(fun _ m ->
                if m.Level <= SyslogLevel.Warning then
                    options.Log $"{options.Name}: dead-letter producer {m.Level} {m.Facility}: {m.Message}")
            .SetErrorHandler(fun _ e ->
                options.Log $"{options.Name}: dead-letter producer error {e.Code}: {e.Reason}")
            .Build()

    /// Produces the original message to `topic` with the failure headers; the task completes once
    /// the broker acknowledged it (faults if it could not be written).
    member _.Write
        (topic: string, original: ConsumeResult<byte[], byte[]>, stage: string, error: exn, attempts: int)
        : Task =
        let headers = Headers()

        if not (isNull original.Message.Headers) then
            for h in original.Message.Headers do
                headers.Add(h.Key, h.GetValueBytes())

        for name, value in
            DeadLetterHeaders.create
                original.Topic
                original.Partition.Value
                original.Offset.Value
                stage
                error
                attempts
                DateTimeOffset.UtcNow do
            headers.Add(name, value)

        let message =
            Message<byte[], byte[]>(
                Key = original.Message.Key,
                Value = original.Message.Value,
                Headers = headers,
                Timestamp = original.Message.Timestamp
            )

        producer.ProduceAsync(topic, message) :> Task

    interface IDisposable with
        member _.Dispose() =
            try
                producer.Flush(TimeSpan.FromSeconds 10.) |> ignore
            with _ ->
                ()

            producer.Dispose()
