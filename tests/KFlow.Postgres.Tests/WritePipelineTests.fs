// Tests for src/KFlow.Postgres/WritePipeline.fs on the throwaway server: batches written several at a
// time keep the order per key (retries included), and a one-partition workflow writes pipelined.
module KFlow.Postgres.Tests.WritePipelineTests

open System
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open FsCheck
open KFlow
open KFlow.Kafka
open KFlow.Testing
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

/// A fresh table (k int PRIMARY KEY, v text, n bigint) and its audit table (one row per row written
/// to it, in write order: k, n), filled by a trigger.
let private auditedTable () =
    let table = freshTable ()

    execute
        $"CREATE TABLE {table} (k int PRIMARY KEY, v text, n bigint); \
          CREATE TABLE {table}_audit (id bigserial PRIMARY KEY, k int, n bigint); \
          CREATE FUNCTION {table}_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
          INSERT INTO {table}_audit (k, n) VALUES (NEW.k, NEW.n); RETURN NULL; END $$; \
          CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_audit()"

    table

/// The n values written per key, in write order.
let private writeOrder (table: string) =
    query $"SELECT k, n FROM {table}_audit ORDER BY id"
    |> List.map (fun r -> unbox<int> r[0], unbox<int64> r[1])
    |> List.groupBy fst
    |> List.map (fun (k, ns) -> k, List.map snd ns)
    |> Map.ofList

let private contents (table: string) =
    query $"SELECT k, v, n FROM {table} ORDER BY k"
    |> List.map (fun r -> unbox<int> r[0], string r[1], unbox<int64> r[2])

let private row (k: int) (v: string) (n: int64) = [| box k; box v; box n |]

/// Writes the batches as the runtime's lane does for a sink with the writer's pipelining: each reserved
/// in order, up to InFlight outstanding, released when it ended; returns the writes' tasks.
let private writeAsLane (writer: UpsertWriter<obj[]>) (batches: obj[] list list) =
    let pipelining = writer.Pipelining
    use room = new SemaphoreSlim(pipelining.InFlight)

    let tasks = [
        for batch in batches do
            room.Wait()
            let value = box batch
            let ready = pipelining.Reserve value
            let t = ready.ContinueWith(fun (_: Task) -> writer.Write batch).Unwrap()

            t.ContinueWith(fun (_: Task) ->
                pipelining.Release value
                room.Release() |> ignore)
            |> ignore

            t
    ]

    tasks

let private pipelinedWriter (table: string) (inFlight: int) =
    writerFor (
        configFor table [ "k"; "v"; "n" ] [ "k" ]
        |> UpsertConfig.withPipelining inFlight
    )

/// Batches over keys 0..5 (byte % 6), numbered in request order: record j of the whole sequence has n = j.
let private numbered (batches: (byte * bool) list list) =
    let mutable n = 0L

    [
        for batch in batches do
            [
                for (k, _) in batch do
                    n <- n + 1L
                    row (int k % 6) $"v{n}" n
            ]
    ]
    |> List.filter (not << List.isEmpty)

let private sequentialModel (batches: obj[] list list) =
    batches
    |> List.concat
    |> List.fold
        (fun (m: Map<int, string * int64>) r -> Map.add (unbox<int> r[0]) (string r[1], unbox<int64> r[2]) m)
        Map.empty
    |> Map.toList
    |> List.map (fun (k, (v, n)) -> k, v, n)

let private orderProperty =
    let table = lazy (auditedTable ())

    testPropertyWithConfig
        {
            FsCheckConfig.defaultConfig with
                maxTest = 20
        }
        "batches over a few keys written 4 at a time leave the table (and the write order per key) of writing them one by one"
    <| fun (raw: (byte * bool) list list) ->
        let table = table.Value
        execute $"TRUNCATE {table}; TRUNCATE {table}_audit"
        use writer = pipelinedWriter table 4
        let batches = numbered raw
        let tasks = writeAsLane writer batches
        (Task.WhenAll tasks).GetAwaiter().GetResult()
        Expect.equal (contents table) (sequentialModel batches) "the table of the sequential writes"

        for KeyValue(k, ns) in writeOrder table do
            Expect.equal ns (List.sort ns) $"key {k}'s rows were written in request order"

        Expect.equal writer.HeldKeys 0 "every key is released"

/// Makes the first insert or update of a row whose v is 'fail' fail: with `sqlState` (40001: transient,
/// retried by the writer; P0001: not), after `delay` seconds.
let private failFirst (table: string) (sqlState: string) (delay: float) =
    execute
        $"CREATE SEQUENCE {table}_fault; \
          CREATE FUNCTION {table}_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
          IF NEW.v = 'fail' AND nextval('{table}_fault') = 1 THEN PERFORM pg_sleep({delay}); \
          RAISE EXCEPTION 'injected fault' USING ERRCODE = '{sqlState}'; END IF; RETURN NEW; END $$; \
          CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_fault()"

/// Waits (at most 30 s) for the condition.
let private eventually (what: string) (condition: unit -> bool) =
    let clock = Stopwatch.StartNew()

    while not (condition ()) do
        if clock.Elapsed > TimeSpan.FromSeconds 30. then
            failtestf "%s did not happen within 30 s" what

        Thread.Sleep 20

let private faults =
    testList "faults" [
        test "a batch whose first attempt fails is retried before a later batch of its keys lands" {
            let table = auditedTable ()
            failFirst table "40001" 0.3
            use writer = pipelinedWriter table 4
            let a = [ row 1 "fail" 1L; row 2 "a" 2L ]
            let b = [ row 1 "b" 3L ]
            let c = [ row 3 "c" 4L ]
            let tasks = writeAsLane writer [ a; b; c ]
            (Task.WhenAll tasks).GetAwaiter().GetResult()
            Expect.isGreaterThanOrEqual writer.Retries 1L "a's first attempt failed and was retried"
            Expect.equal (contents table) [ 1, "b", 3L; 2, "a", 2L; 3, "c", 4L ] "b wins key 1"
            Expect.equal (writeOrder table |> Map.find 1) [ 1L; 3L ] "key 1: a (after its retry), then b"
        }

        test "a reserved batch that failed holds its keys until it is written again (the runtime's retry)" {
            let table = auditedTable ()
            failFirst table "P0001" 0.0
            use writer = pipelinedWriter table 4
            let pipelining = writer.Pipelining
            let a = [ row 1 "fail" 1L ]
            let b = [ row 1 "b" 2L ]
            let readyA = pipelining.Reserve(box a)
            let readyB = pipelining.Reserve(box b)
            Expect.isTrue readyA.IsCompleted "a may be written at once"
            let failed = faultOf "a's first write" (fun () -> writer.Write a)
            Expect.isTrue (failed :? PgSinkException) "a's failure is not transient"
            Thread.Sleep 200
            Expect.isFalse readyB.IsCompleted "b still waits for a after a failed"
            writer.Write(a).GetAwaiter().GetResult()
            pipelining.Release(box a)
            readyB.GetAwaiter().GetResult()
            writer.Write(b).GetAwaiter().GetResult()
            pipelining.Release(box b)
            Expect.equal (writeOrder table |> Map.find 1) [ 1L; 2L ] "a's retry landed before b"
            Expect.equal writer.HeldKeys 0 "every key is released"
        }

        test "a reserved batch that failed lets the later batches of its keys go once the runtime releases it" {
            let table = auditedTable ()
            failFirst table "P0001" 0.0
            use writer = pipelinedWriter table 4
            let pipelining = writer.Pipelining
            let a = [ row 1 "fail" 1L ]
            let b = [ row 1 "b" 2L ]
            pipelining.Reserve(box a) |> ignore
            let readyB = pipelining.Reserve(box b)
            faultOf "a's write" (fun () -> writer.Write a) |> ignore
            Expect.isFalse readyB.IsCompleted "b waits while a may still be retried"
            pipelining.Release(box a)
            eventually "b's reservation" (fun () -> readyB.IsCompleted)
            writer.Write(b).GetAwaiter().GetResult()
            pipelining.Release(box b)
            Expect.equal (contents table) [ 1, "b", 2L ] "b landed; a never did"
        }

        test "batches written without a reservation wait for the earlier writes of their keys" {
            let table = auditedTable ()
            failFirst table "40001" 0.3
            use writer = pipelinedWriter table 4
            let a = writer.Write [ row 1 "fail" 1L ]
            let b = writer.Write [ row 1 "b" 2L; row 2 "b" 3L ]
            let c = writer.Write [ row 2 "c" 4L ]
            (Task.WhenAll [ a; b; c ]).GetAwaiter().GetResult()
            Expect.equal (writeOrder table |> Map.find 1) [ 1L; 2L ] "key 1: a, then b"
            Expect.equal (writeOrder table |> Map.find 2) [ 3L; 4L ] "key 2: b, then c"
        }

        test "a table without keys never waits: its batches run side by side" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int, v text)"

            execute
                $"CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); \
                  RETURN NULL; END $$; CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH STATEMENT \
                  EXECUTE FUNCTION {table}_slow()"

            use writer =
                writerFor (
                    configFor table [ "k"; "v" ] []
                    |> UpsertConfig.withExactlyOnce "pipeline-group"
                    |> UpsertConfig.withPipelining 4
                )

            let position o =
                Position.create (TopicPartition.create "t" 0) o

            let tasks = [
                for i in 0L .. 3L -> writer.WriteApplied([ position i ], [ [| box 1; box $"v{i}" |] ])
            ]

            (Task.WhenAll tasks).GetAwaiter().GetResult()
            Expect.equal writer.PeakInFlight 4 "the four batches of key 1 ran at once"
            Expect.equal (scalar<int64> $"SELECT count(*) FROM {table}") 4L "each appended once"
        }
    ]

let private topic = "pipelined"

/// Produces `count` messages "k:n" (k = n % keys) to one partition; waits for every delivery.
let private produce (cluster: EmbeddedKafkaCluster) (count: int) (keys: int) =
    use producer = ProducerBuilder<Null, string>(cluster.ProducerConfig()).Build()

    for n in 0 .. count - 1 do
        producer.Produce(topic, Confluent.Kafka.Message<Null, string>(Value = $"{n % keys}:{n}"))

    producer.Flush(TimeSpan.FromSeconds 60.) |> ignore

/// (end offset, committed offset) of partition 0 for the group.
let private offsets (cluster: EmbeddedKafkaCluster) (group: string) =
    use consumer = ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig group).Build()
    let tp = Confluent.Kafka.TopicPartition(topic, Partition 0)
    let high = consumer.QueryWatermarkOffsets(tp, TimeSpan.FromSeconds 10.).High.Value
    let committed = consumer.Committed([ tp ], TimeSpan.FromSeconds 10.) |> Seq.head
    high, committed.Offset.Value

/// Runs the workflow until it consumed `count` messages (at most 120 s), then stops it.
let private runUntilConsumed (workflow: WorkflowHandle) (count: int) =
    let clock = Stopwatch.StartNew()

    while workflow.Stats.Consumed < int64 count do
        if clock.Elapsed > TimeSpan.FromSeconds 120. then
            failtestf "The workflow consumed %d of %d messages within 120 s." workflow.Stats.Consumed count

        if workflow.Completion.IsCompleted then
            failtestf "The workflow ended early: %O" workflow.Completion.Exception

        Thread.Sleep 50

    Expect.isTrue (workflow.StopAsync().Wait(TimeSpan.FromSeconds 60.)) "the workflow stops within 60 s"

let private parse (value: byte[]) =
    match (Text.Encoding.UTF8.GetString value).Split ':' with
    | [| k; n |] -> int k, int64 n
    | _ -> failwith "a message is k:n"

let private workflows =
    testList "workflow" [
        test
            "one partition, aggregate then UpsertWriter.sink: several batches in flight, the last value per key, end offsets committed" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic(topic, 1)
            let count, keys = 6_000, 1_000
            produce cluster count keys
            let table = auditedTable ()
            // Slow statements, so batches pile up behind the one running.
            execute
                $"CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); \
                  RETURN NULL; END $$; CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH STATEMENT \
                  EXECUTE FUNCTION {table}_slow()"

            use writer = pipelinedWriter table 4
            let group = "pipelined-" + Guid.NewGuid().ToString("N")

            let pipe =
                Pipe.source<byte[]>
                |> Pipe.map (fun v ->
                    let k, n = parse v
                    row k $"v{n}" n)
                |> Pipe.aggregate (Buffer.count 100)
                |> UpsertWriter.sink "pipelined" writer

            let workflow =
                Workflow.run
                    (WorkflowOptions.create "pipelined" cluster.BootstrapServers group [ topic ])
                    pipe

            runUntilConsumed workflow count

            Expect.isGreaterThan
                writer.PeakInFlight
                1
                "more than one batch of the partition was written at once"

            let expected = [
                for k in 0 .. keys - 1 ->
                    let n = int64 (count - keys + k)
                    k, $"v{n}", n
            ]

            Expect.equal (contents table) expected "each key holds its last message"

            for KeyValue(k, ns) in writeOrder table do
                Expect.equal ns (List.sort ns) $"key {k}'s rows were written in offset order"

            Expect.equal
                (offsets cluster group)
                (int64 count, int64 count)
                "the committed offset is the end offset"
        }

        test
            "exactly-once mode with 4 batches in flight applies each message once across a stop and a restart" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic(topic, 1)
            let count = 4_000
            produce cluster (count / 2) 7
            let table = freshTable ()
            execute $"CREATE TABLE {table} (src_offset bigint, body text)"
            let group = "pipelined-once-" + Guid.NewGuid().ToString("N")

            use writer =
                writerFor (
                    UpsertConfig.create
                        (PgConnection.ConnectionString(connectionString ()))
                        table
                        [ "src_offset"; "body" ]
                        []
                        (fun (e: Envelope<byte[]>) -> [|
                            box e.Position.Offset
                            box (Text.Encoding.UTF8.GetString e.Value)
                        |])
                    |> UpsertConfig.withExactlyOnce group
                    |> UpsertConfig.withPipelining 4
                )

            let pipe =
                Pipe.source<byte[]>
                |> Pipe.mapEnvelope id
                |> Pipe.aggregate (Buffer.count 50)
                |> UpsertWriter.sinkExactlyOnce "events" writer

            let options =
                WorkflowOptions.create "pipelined-once" cluster.BootstrapServers group [ topic ]

            // The first half, then the second half after a restart (from the committed offset).
            runUntilConsumed (Workflow.run options pipe) (count / 2)
            produce cluster (count / 2) 7
            runUntilConsumed (Workflow.run options pipe) (count / 2)
            Expect.isGreaterThan writer.PeakInFlight 1 "batches were written side by side"
            let rows = scalar<int64> $"SELECT count(*) FROM {table}"
            let distinct = scalar<int64> $"SELECT count(DISTINCT src_offset) FROM {table}"
            Expect.equal distinct (int64 count) "every message was applied"
            Expect.equal rows (int64 count) "none twice"

            Expect.equal
                (offsets cluster group)
                (int64 count, int64 count)
                "the committed offset is the end offset"
        }
    ]

let tests =
    testSequenced
    <| testList "WritePipeline" [ testList "order" [ orderProperty ]; faults; workflows ]
