// Tests for src/KFlow.Kafka/KafkaSink.fs: produce through the sink to the embedded cluster, read the
// topic back; broker down and produce-error injection must fault the write. Sequenced (one cluster).
module KFlow.Kafka.Tests.KafkaSinkTests

open System
open System.Text
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka
open KFlow.Testing

let private seconds (n: float) = TimeSpan.FromSeconds n

/// Options writing (key, value) pairs as strings to `topic`, with the fast producer settings.
let private pairs
    (cluster: EmbeddedKafkaCluster)
    (topic: string)
    : KafkaSinkOptions<string * string, string, string> =
    {
        KafkaSinkOptions.create cluster.BootstrapServers topic fst snd with
            Producer = cluster.ProducerConfig()
    }

/// Reads `count` messages of a topic with a fresh group (fails after 30 s).
let private readBack (cluster: EmbeddedKafkaCluster) (topic: string) (count: int) =
    use consumer =
        ConsumerBuilder<string, string>(cluster.ConsumerConfig $"read-{Guid.NewGuid():N}").Build()

    consumer.Subscribe topic
    let deadline = DateTime.UtcNow + seconds 30.
    let results = ResizeArray<ConsumeResult<string, string>>()

    while results.Count < count do
        if DateTime.UtcNow > deadline then
            failtestf "Only %d of %d messages could be read back from '%s'." results.Count count topic

        match consumer.Consume(TimeSpan.FromMilliseconds 100.) with
        | null -> ()
        | r -> results.Add r

    consumer.Close()
    List.ofSeq results

/// Messages in a topic: the sum of its partitions' end offsets (a fresh topic, nothing deleted).
let private stored (cluster: EmbeddedKafkaCluster) (topic: string) (partitions: int) =
    endOffsets cluster topic partitions |> List.sumBy snd

/// Waits for a write, returning its exception (None when it succeeded); fails after 60 s.
let private outcome (write: Task) =
    try
        if not (write.Wait(seconds 60.)) then
            failtest "The write neither completed nor faulted within 60 s."

        None
    with :? AggregateException as e ->
        Some(e.InnerException |> nonNull)

let private roundTrip =
    testCase "produces every value of a batch with its key, value and headers, per-key order kept, each once"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("out", 4)

        use sink =
            KafkaSink.create {
                pairs cluster "out" with
                    Headers = fun (k, _) -> [ "source-key", Encoding.UTF8.GetBytes(k: string) ]
            }

        let batch = [ for i in 0..499 -> $"k{i % 7}", $"v{i}" ]
        Expect.isNone (outcome (KafkaSink.produce sink batch)) "the write completes"
        // Completed means delivered: every message is in the topic now, none twice.
        Expect.equal (stored cluster "out" 4) 500L "the topic holds the 500 messages, none twice"
        let read = readBack cluster "out" 500

        Expect.equal
            (read |> List.map (fun r -> r.Message.Key, r.Message.Value) |> set)
            (set batch)
            "the same key/value pairs"

        for r in read do
            let header = r.Message.Headers.GetLastBytes "source-key" |> Encoding.UTF8.GetString
            Expect.equal header r.Message.Key "the header mapping is applied"

        for key, values in read |> List.groupBy _.Message.Key do
            let numbers = values |> List.map (fun r -> int (r.Message.Value.Substring 1))
            Expect.equal numbers (List.sort numbers) $"key {key} keeps the batch's order"

let private byValue =
    testCase "ByValue puts each message in the partition it computes"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("routed", 3)

        use sink =
            KafkaSink.create {
                KafkaSinkOptions.create cluster.BootstrapServers "routed" (fun (_: int) -> null) string with
                    Producer = cluster.ProducerConfig()
                    Partitioner = ByValue(fun i -> i % 3)
                    KeySerializer = Some Serializers.Null
            }

        Expect.isNone (outcome (KafkaSink.produce sink [ 0..29 ])) "the write completes"

        for r in readBack cluster "routed" 30 do
            Expect.equal r.Partition.Value (int r.Message.Value % 3) "the computed partition"

let private brokerDown =
    testCase "a write faults while the broker is down, and a later write succeeds once it is back"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("down", 2)
        let producer = cluster.ProducerConfig()
        // How long a write may wait for the broker before it faults: long enough for a loaded machine
        // to connect (and reconnect after the broker is back), short enough for a quick test.
        producer.MessageTimeoutMs <- 5000

        use sink =
            KafkaSink.create {
                pairs cluster "down" with
                    Producer = producer
            }
        // A first write connects the producer (and gets its producer id) while the broker is up.
        Expect.isNone (outcome (KafkaSink.produce sink [ "a", "before" ])) "the first write completes"
        cluster.TakeBrokerDown 1
        let failed = outcome (KafkaSink.produce sink [ for i in 0..9 -> "b", $"down-{i}" ])
        Expect.isSome failed "the write faults: its tokens stay open"
        cluster.BringBrokerUp 1
        // The producer reconnects with a backoff: a write sent before it has may still time out, so a
        // few are tried, each waited for to its outcome.
        let rec recovered attempt =
            match outcome (KafkaSink.produce sink [ "c", "after" ]) with
            | None -> true
            | Some _ when attempt < 5 -> recovered (attempt + 1)
            | Some _ -> false

        Expect.isTrue (recovered 1) "a write after recovery completes"
        // A write that timed out may still have reached the broker, so every stored message is read.
        let values =
            readBack cluster "down" (int (stored cluster "down" 2))
            |> List.map _.Message.Value
            |> set

        Expect.equal values (set [ "before"; "after" ]) "the delivered messages are in the topic"

let private produceError =
    testCase "a write faults when the broker answers the produce request with a non-retriable error"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("refused", 1)
        use sink = KafkaSink.create (pairs cluster "refused")
        Expect.isNone (outcome (KafkaSink.produce sink [ "a", "first" ])) "the first write completes"
        cluster.PushRequestErrors(KafkaApiKey.Produce, ErrorCode.TopicAuthorizationFailed)

        match outcome (KafkaSink.produce sink [ "a", "refused" ]) with
        | Some(:? KafkaDeliveryException as e) ->
            Expect.equal e.Error.Code ErrorCode.TopicAuthorizationFailed "the broker's error is reported"
            Expect.equal (e.Failed, e.Total) (1, 1) "one message of one failed"
        | other -> failtestf "Expected a KafkaDeliveryException, got %A" other

let private retried =
    testCase "retriable produce errors are retried and the batch is delivered exactly once"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("retried", 1)
        use sink = KafkaSink.create (pairs cluster "retried")
        Expect.isNone (outcome (KafkaSink.produce sink [ "a", "first" ])) "the first write completes"

        cluster.PushRequestErrors(
            KafkaApiKey.Produce,
            ErrorCode.NotEnoughReplicas,
            ErrorCode.RequestTimedOut,
            ErrorCode.NotEnoughReplicas
        )

        Expect.isNone
            (outcome (KafkaSink.produce sink [ for i in 0..99 -> "a", $"v{i}" ]))
            "the write completes"

        Expect.equal (stored cluster "retried" 1) 101L "no duplicate from the retries (idempotent producer)"

let private emptyBatch =
    testCase "an empty batch completes at once"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        use sink = KafkaSink.create (pairs cluster "unused")
        Expect.isTrue (KafkaSink.produce sink []).IsCompletedSuccessfully "completed"

let private optionTests =
    testList "options" [
        testCase "enable.idempotence is true unless set, and ByKey sets librdkafka's partitioner"
        <| fun () ->
            let o = KafkaSinkOptions.create "localhost:9092" "t" fst snd
            let c = KafkaSinkOptions.producerConfig o
            Expect.equal c.EnableIdempotence (Nullable true) "idempotent by default"
            Expect.equal (c.Get "partitioner") "murmur2_random" "murmur2_random by default"

            let off =
                ProducerConfig(BootstrapServers = "localhost:9092", EnableIdempotence = false)

            Expect.equal
                (KafkaSinkOptions.producerConfig { o with Producer = off }).EnableIdempotence
                (Nullable false)
                "an explicit setting is kept"

            Expect.isFalse o.Producer.EnableIdempotence.HasValue "the options are not changed"

        testCase "an empty topic is refused with a sentence naming the setting"
        <| fun () ->
            let o = KafkaSinkOptions.create "localhost:9092" "" fst snd
            let e = Expect.throwsC (fun () -> KafkaSinkOptions.validate o |> ignore) id
            Expect.equal (e :?> ArgumentException).ParamName "Topic" "names Topic"
    ]

/// The sink on a workflow: a pipe producing to another topic through the sink copies every message.
let private inWorkflow =
    testCase "a workflow copying a topic through the sink delivers every message"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("source", 4)
        cluster.CreateTopic("copy", 4)
        produceKeyed cluster "source" 10 2_000
        use sink = KafkaSink.create (pairs cluster "copy")

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.mapEnvelope (fun e -> e.Key, Encoding.UTF8.GetString e.Value)
            |> Pipe.aggregate (Buffer.count 100)
            |> Pipe.sink "copy" (KafkaSink.produce sink)

        let log = Log()
        let handle = Workflow.run (options cluster log "copier" [ "source" ]) pipe

        waitUntil log (seconds 30.) "every message is copied" (fun () -> stored cluster "copy" 4 >= 2_000L)

        handle.StopAsync().Wait(seconds 30.) |> ignore
        let all = int (stored cluster "copy" 4)

        let copied =
            readBack cluster "copy" all
            |> List.map (fun r -> r.Message.Key, r.Message.Value)

        Expect.equal (copied |> List.distinct |> List.length) 2_000 "every message copied (at least once)"

let tests =
    testSequenced
    <| testList "KafkaSink" [
        roundTrip
        byValue
        brokerDown
        produceError
        retried
        emptyBatch
        optionTests
        inWorkflow
    ]
