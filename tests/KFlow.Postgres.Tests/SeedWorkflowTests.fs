// The seed's example workflow end to end in F#: the README's F# example (ReadmeTests.exampleWorkflow,
// compiled here too) runs on the embedded cluster and upserts into my_table on the throwaway server.
module KFlow.Postgres.Tests.SeedWorkflowTests

open System
open System.Diagnostics
open System.Text.Json
open System.Threading
open Confluent.Kafka
open Expecto
open KFlow.Testing
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase
open KFlow.Kafka.Tests.ReadmeTests

let private topic, group, partitions =
    "example_topic", "example_consumer_group_id", 8

/// 20,000 events over 300 keys: the first 12,000 spread over all keys (40 each, never a full batch of
/// 100), the rest over 20 hot keys (400 more each: full batches, then a partial one). Foo counts each
/// key's events, so a key's last event has the largest Foo.
let private events = [
    let counts = Collections.Generic.Dictionary<string, int64>()

    for i in 0..19_999 do
        let key = if i < 12_000 then $"k{i % 300}" else $"k{i % 20}"

        let foo =
            match counts.TryGetValue key with
            | true, n -> n
            | _ -> 0L

        counts[key] <- foo + 1L

        {
            Key = key
            Foo = foo
            Bar = $"{key}/{foo}"
            Baz = float i / 4.0
        }
]

/// Produces the events as JSON without the key (it travels as the Kafka key); waits for every delivery.
let private produce (cluster: EmbeddedKafkaCluster) =
    use producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()
    let json = JsonSerializerOptions(JsonSerializerDefaults.Web)
    let mutable failed = 0

    for e in events do
        let body =
            JsonSerializer.Serialize(
                {|
                    foo = e.Foo
                    bar = e.Bar
                    baz = e.Baz
                |},
                json
            )

        producer.Produce(
            topic,
            Message<_, _>(Key = e.Key, Value = body),
            fun report ->
                if report.Error.IsError then
                    Interlocked.Increment &failed |> ignore
        )

    producer.Flush(TimeSpan.FromSeconds 60.) |> ignore
    Expect.equal failed 0 "every event is delivered"

/// (end offset, committed offset) of every partition, for the group.
let private offsets (cluster: EmbeddedKafkaCluster) =
    use consumer =
        ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig "watermarks").Build()

    let ends = [
        for p in 0 .. partitions - 1 ->
            (consumer.QueryWatermarkOffsets(TopicPartition(topic, Partition p), TimeSpan.FromSeconds 10.))
                .High.Value
    ]

    use groupConsumer =
        ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig group).Build()

    let committed =
        groupConsumer.Committed(
            [ for p in 0 .. partitions - 1 -> TopicPartition(topic, Partition p) ],
            TimeSpan.FromSeconds 10.
        )
        |> Seq.sortBy _.Partition.Value
        |> Seq.map _.Offset.Value
        |> List.ofSeq

    ends, committed

let private endToEnd () =
    use cluster = EmbeddedKafka.start 1
    cluster.CreateTopic(topic, partitions)
    produce cluster
    // my_table of its own schema, so the name is the README's and other tests' my_table is untouched.
    let schema = "seed_" + Guid.NewGuid().ToString("N").Substring(0, 8)
    execute $"CREATE SCHEMA {schema}"

    execute
        $"CREATE TABLE {schema}.my_table (key text PRIMARY KEY, foo bigint NOT NULL, bar text, baz double precision)"

    let connection = $"{connectionString ()};Search Path={schema}"

    let config =
        UpsertConfig.create
            (PgConnection.ConnectionString connection)
            "my_table"
            [ "key"; "foo"; "bar"; "baz" ]
            [ "key" ]
            (fun (e: Event) -> [| box e.Key; box e.Foo; box e.Bar; box e.Baz |])

    use writer = writerFor config
    let workflow = exampleWorkflow cluster.BootstrapServers (UpsertWriter.write writer)
    let clock = Stopwatch.StartNew()

    while workflow.Stats.Consumed < int64 events.Length do
        if clock.Elapsed > TimeSpan.FromSeconds 120. then
            failtestf
                "The workflow consumed %d of %d events within 120 s."
                workflow.Stats.Consumed
                events.Length

        if workflow.Completion.IsCompleted then
            failtestf "The workflow ended early: %O" workflow.Completion.Exception

        Thread.Sleep 50

    workflow.StopAsync().Wait(TimeSpan.FromSeconds 60.)
    |> fun stopped -> Expect.isTrue stopped "the workflow stops within 60 s"

    let expected =
        events
        |> List.groupBy _.Key
        |> List.map (fun (key, es) ->
            let last = List.last es
            [| box key; box last.Foo; box last.Bar; box last.Baz |])
        |> List.sortWith (fun a b -> String.CompareOrdinal(string a[0], string b[0]))

    let rows =
        query $"SELECT key, foo, bar, baz FROM {schema}.my_table ORDER BY key COLLATE \"C\""

    Expect.equal rows.Length 300 "one row per distinct key"

    Expect.sequenceEqual
        (rows |> List.map (fun r -> r |> Array.map string |> String.concat " "))
        (expected |> List.map (fun r -> r |> Array.map string |> String.concat " "))
        "each key's row holds the values of its last event"

    let ends, committed = offsets cluster
    Expect.equal (List.sum ends) (int64 events.Length) "the topic holds every event"
    Expect.equal committed ends "the committed offsets are the end offsets"

    printfn
        "seed workflow: %d events, %d keys, %d rows, %d consumed, %d restarts, %.1f s from start to stopped"
        events.Length
        expected.Length
        rows.Length
        workflow.Stats.Consumed
        workflow.Stats.Restarts
        clock.Elapsed.TotalSeconds

let tests =
    testSequenced
    <| testList "Seed workflow" [
        testCase
            "the README's F# workflow upserts 20,000 JSON events of 300 keys into my_table: a row per key holding its last event, end offsets committed"
            endToEnd
    ]
