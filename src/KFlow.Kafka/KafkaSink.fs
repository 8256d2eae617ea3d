// The Kafka sink: produces each batch reaching it to a topic with an idempotent producer; the write's
// Task completes only when every message has a successful delivery report, so a failed delivery
// keeps the batch's tokens open and the commit point never passes it.
namespace KFlow.Kafka

open System
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka

/// Which partition a produced message goes to.
[<NoEquality; NoComparison>]
type KafkaPartitioner<'a> =
    /// By the message key, with librdkafka's `partitioner` algorithm of that name: "murmur2_random"
    /// (the Java client's, so Java and .NET producers agree), "consistent_random" (librdkafka's
    /// default), "murmur2", "consistent", "fnv1a", "fnv1a_random" or "random".
    | ByKey of algorithm: string
    /// The partition the function computes from the value (e.g. the source partition); it must be
    /// below the topic's partition count.
    | ByValue of partition: ('a -> int)

/// The settings of a Kafka sink writing values 'a as messages with keys 'k and values 'v.
/// Build them with `KafkaSinkOptions.create` and `{ o with … }`.
[<NoEquality; NoComparison>]
type KafkaSinkOptions<'a, 'k, 'v> = {
    /// librdkafka producer settings (bootstrap.servers, TLS, SASL, linger.ms, message.timeout.ms, …);
    /// copied when the sink is created. enable.idempotence is set to true unless given here
    /// (librdkafka's default is false): no duplicates or reordering from the producer's own retries.
    Producer: ProducerConfig
    /// The topic to produce to. Required.
    Topic: string
    /// The message key of a value. Default: a null key (`KafkaSinkOptions.create` asks for it).
    Key: 'a -> 'k
    /// The message value of a value. Required.
    Value: 'a -> 'v
    /// The headers of a value. Default none.
    Headers: 'a -> (string * byte[]) list
    /// Which partition each message goes to. Default ByKey "murmur2_random" (librdkafka's default
    /// is consistent_random; murmur2_random puts a key where the Java client would).
    Partitioner: KafkaPartitioner<'a>
    /// Serialises keys. Default None: Confluent.Kafka's serializer for 'k (string, byte[], int,
    /// long, float, double, Null, Ignore).
    KeySerializer: ISerializer<'k> option
    /// Serialises values. Default None: Confluent.Kafka's serializer for 'v.
    ValueSerializer: ISerializer<'v> option
    /// How long disposing the sink waits for messages still in flight. Default 10 s.
    FlushTimeout: TimeSpan
}

/// Building Kafka sink options.
[<RequireQualifiedAccess>]
module KafkaSinkOptions =
    /// Options with every default for a topic on bootstrapServers, with the key and value mappings.
    let create
        (bootstrapServers: string)
        (topic: string)
        (key: 'a -> 'k)
        (value: 'a -> 'v)
        : KafkaSinkOptions<'a, 'k, 'v> =
        {
            Producer = ProducerConfig(BootstrapServers = bootstrapServers)
            Topic = topic
            Key = key
            Value = value
            Headers = fun _ -> []
            Partitioner = ByKey "murmur2_random"
            KeySerializer = None
            ValueSerializer = None
            FlushTimeout = TimeSpan.FromSeconds 10.
        }

    /// The producer configuration a sink uses: a copy of Producer with enable.idempotence true
    /// unless set, and the partitioner of `ByKey`.
    let producerConfig (o: KafkaSinkOptions<'a, 'k, 'v>) =
        let c = ProducerConfig(Collections.Generic.Dictionary(o.Producer))

        if not c.EnableIdempotence.HasValue then
            c.EnableIdempotence <- true

        match o.Partitioner with
        | ByKey algorithm -> c.Set("partitioner", algorithm)
        | ByValue _ -> ()

        c

    /// Checks the options; ArgumentException with a sentence naming the setting.
    let validate (o: KafkaSinkOptions<'a, 'k, 'v>) =
        let fail (name: string) (message: string) =
            raise (ArgumentException(message, name))

        if isNull o.Producer then
            fail "Producer" "KafkaSinkOptions.Producer must not be null; start from KafkaSinkOptions.create."

        if String.IsNullOrWhiteSpace o.Producer.BootstrapServers then
            fail
                "Producer"
                "KafkaSinkOptions.Producer.BootstrapServers must not be empty; give the bootstrap.servers list."

        if String.IsNullOrWhiteSpace o.Topic then
            fail "Topic" "KafkaSinkOptions.Topic must not be empty; name the topic to produce to."

        if isNull (box o.Key) || isNull (box o.Value) || isNull (box o.Headers) then
            fail "Key" "KafkaSinkOptions.Key, Value and Headers must be functions, not null."

        match o.Partitioner with
        | ByKey algorithm when String.IsNullOrWhiteSpace algorithm ->
            fail
                "Partitioner"
                "KafkaSinkOptions.Partitioner ByKey needs an algorithm, e.g. \"murmur2_random\"."
        | _ -> ()

        if o.FlushTimeout < TimeSpan.Zero then
            fail "FlushTimeout" "KafkaSinkOptions.FlushTimeout must not be negative."

        o

/// The error a write's Task faults with when messages of the batch were not delivered.
type KafkaDeliveryException(topic: string, failed: int, total: int, first: Error) =
    inherit
        Exception(
            $"Kafka sink: {failed} of {total} messages to topic '{topic}' were not delivered "
            + $"(first error: {first.Code}: {first.Reason}); their offsets stay open."
        )

    /// The topic produced to.
    member _.Topic = topic
    /// Messages of the batch whose delivery failed.
    member _.Failed = failed
    /// Messages in the batch.
    member _.Total = total
    /// The first delivery error reported.
    member _.Error = first

/// The delivery state of one batch: completes its Task when every report is in.
[<Sealed>]
type internal Delivery(topic: string, total: int) =
    let done' = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    let mutable reported = 0
    let mutable failed = 0
    let mutable firstError: Error | null = null

    member _.Task: Task = done'.Task

    /// Counts one delivery report.
    member _.Report(error: Error) =
        if error.IsError then
            if Interlocked.Increment &failed = 1 then
                firstError <- error

        if Interlocked.Increment &reported = total then
            match Volatile.Read &failed, firstError with
            | 0, _ -> done'.TrySetResult() |> ignore
            | n, first ->
                let first = first |> Option.ofObj |> Option.defaultValue (Error ErrorCode.Unknown)
                done'.TrySetException(KafkaDeliveryException(topic, n, total, first)) |> ignore

    /// Faults the batch at once (a message could not even be queued).
    member _.Fail(ex: exn) = done'.TrySetException ex |> ignore

/// A Kafka sink: one producer shared by every write. Dispose it after the workflow has stopped
/// (it flushes for at most FlushTimeout, then closes the producer).
[<Sealed>]
type KafkaSink<'a, 'k, 'v> internal (options: KafkaSinkOptions<'a, 'k, 'v>) =
    let config = KafkaSinkOptions.producerConfig options
    let gate = obj ()
    let mutable fatal = false

    let build () =
        let b =
            ProducerBuilder<'k, 'v>(config)
                .SetErrorHandler(fun _ e ->
                    if e.IsFatal then
                        Volatile.Write(&fatal, true))

        options.KeySerializer |> Option.iter (b.SetKeySerializer >> ignore)
        options.ValueSerializer |> Option.iter (b.SetValueSerializer >> ignore)
        b.Build()

    let mutable producer = build ()

    /// The producer to use: a fatal error (idempotence broken) makes librdkafka's producer unusable,
    /// so the next write gets a new one.
    let current () =
        lock gate (fun () ->
            if Volatile.Read &fatal then
                producer.Dispose()
                fatal <- false
                producer <- build ()

            producer)

    let message (value: 'a) =
        let m = Message<'k, 'v>(Key = options.Key value, Value = options.Value value)
        let headers = options.Headers value

        if not headers.IsEmpty then
            let h = Headers()

            for name, bytes in headers do
                h.Add(name, bytes)

            m.Headers <- h

        m

    /// The options the sink was created with.
    member _.Options = options

    /// The producer configuration in use (enable.idempotence true unless set otherwise).
    member _.ProducerConfig = config

    /// <summary>Produces every value of the batch, in order; the Task completes when every message
    /// has a successful delivery report and faults (KafkaDeliveryException, or the producer's
    /// exception) when any has not.</summary>
    member _.WriteAsync(batch: 'a list) : Task =
        match batch with
        | [] -> Task.CompletedTask
        | _ ->
            let producer = current ()
            let delivery = Delivery(options.Topic, List.length batch)
            let report = Action<DeliveryReport<'k, 'v>>(fun r -> delivery.Report r.Error)

            let send (value: 'a) =
                let m = message value

                let mutable queued = false

                while not queued do
                    try
                        match options.Partitioner with
                        | ByKey _ -> producer.Produce(options.Topic, m, report)
                        | ByValue partition ->
                            producer.Produce(
                                TopicPartition(options.Topic, Partition(partition value)),
                                m,
                                report
                            )

                        queued <- true
                    with :? ProduceException<'k, 'v> as e when e.Error.Code = ErrorCode.Local_QueueFull ->
                        // The local queue is full: wait for deliveries to free room.
                        Thread.Sleep 5

            try
                for value in batch do
                    send value
            with ex ->
                delivery.Fail ex

            delivery.Task

    /// Flushes for at most FlushTimeout, then closes the producer. Idempotent.
    member _.Dispose() =
        lock gate (fun () ->
            if not (isNull (box producer)) then
                producer.Flush options.FlushTimeout |> ignore
                producer.Dispose()
                producer <- Unchecked.defaultof<_>)

    interface IDisposable with
        member this.Dispose() = this.Dispose()

/// Creating Kafka sinks and writing to them from a pipe:
/// `pipe |> Pipe.aggregate (Buffer.count 100) |> Pipe.sink "out" (KafkaSink.produce sink)`.
[<RequireQualifiedAccess>]
module KafkaSink =
    /// A sink with its producer, after checking the options (ArgumentException naming the setting).
    let create (options: KafkaSinkOptions<'a, 'k, 'v>) =
        new KafkaSink<'a, 'k, 'v>(KafkaSinkOptions.validate options)

    /// The write of a batch (what an aggregate emits): completes when every message is delivered,
    /// faults when any is not.
    let produce (sink: KafkaSink<'a, 'k, 'v>) : 'a list -> Task = sink.WriteAsync

    /// The write of a single value (a pipe without aggregate).
    let produceOne (sink: KafkaSink<'a, 'k, 'v>) : 'a -> Task = fun value -> sink.WriteAsync [ value ]
