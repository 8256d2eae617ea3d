// Tests for the error policies and health on the embedded cluster (src/KFlow.Kafka/ErrorPolicy.fs,
// FailureHandling.fs, DeadLetterWriter.fs, Deserialize.fs, WorkflowState.fs, Preflight.fs through
// Workflow.run): poison messages under each policy, transient sink and broker faults, bad settings.
module KFlow.Kafka.Tests.SupervisionTests

open System
open System.Collections.Concurrent
open System.Text
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka
open KFlow.Postgres
open KFlow.Testing

let private ms (n: float) = TimeSpan.FromMilliseconds n

let private quick = {
    First = ms 20.
    Max = ms 100.
    Jitter = 0.2
}

let private ended (log: Log) (handle: WorkflowHandle) =
    let finished = handle.Completion.ContinueWith(fun (_: Task) -> ()).Wait(seconds 30.)
    Expect.isTrue finished $"the workflow ended.\nLog:\n{log.Tail}"
    Expect.isTrue handle.Completion.IsFaulted "Completion faulted"
    (nonNull (nonNull handle.Completion.Exception).InnerException)

let private isState (expected: string) (state: WorkflowState) =
    let name =
        match state with
        | WorkflowState.Starting -> "Starting"
        | WorkflowState.Running -> "Running"
        | WorkflowState.BackingOff _ -> "BackingOff"
        | WorkflowState.Stopped -> "Stopped"
        | WorkflowState.Failed _ -> "Failed"

    name = expected

/// Produces raw values (key "k") to a topic and waits for every delivery.
let private produceValues (cluster: EmbeddedKafkaCluster) (topic: string) (values: byte[] list) =
    use producer = ProducerBuilder<string, byte[]>(cluster.ProducerConfig()).Build()

    for v in values do
        producer.ProduceAsync(topic, Confluent.Kafka.Message<_, _>(Key = "k", Value = v)).Wait()

/// Reads `count` messages of the first `partitions` partitions of a topic from the start (fails
/// after 20 s).
let private readPartitions
    (cluster: EmbeddedKafkaCluster)
    (log: Log)
    (topic: string)
    partitions
    (count: int)
    =
    use consumer =
        ConsumerBuilder<string, byte[]>(cluster.ConsumerConfig $"reader-{Guid.NewGuid()}").Build()

    consumer.Assign [
        for p in 0 .. partitions - 1 -> TopicPartitionOffset(topic, Partition p, Offset.Beginning)
    ]

    let got = ResizeArray<ConsumeResult<string, byte[]>>()
    let clock = Diagnostics.Stopwatch.StartNew()

    while got.Count < count && clock.Elapsed < seconds 20. do
        match consumer.Consume 100 with
        | null -> ()
        | cr when cr.IsPartitionEOF -> ()
        | cr -> got.Add cr

    if got.Count < count then
        failtestf "read %d of %d messages of %s.\nLog:\n%s" got.Count count topic log.Tail

    List.ofSeq got

/// Reads `count` messages of a one-partition topic from the start (fails after 20 s).
let private readAll (cluster: EmbeddedKafkaCluster) (log: Log) (topic: string) (count: int) =
    readPartitions cluster log topic 1 count

let private header (name: string) (cr: ConsumeResult<string, byte[]>) =
    Encoding.UTF8.GetString(cr.Message.Headers.GetLastBytes name)

/// One partition of `n` string values "k0:i"; a map stage named "parse" throws on k0:`poison` while `broken`.
let private poisonedStage
    (cluster: EmbeddedKafkaCluster)
    topic
    n
    poison
    (broken: bool ref)
    (sunk: ConcurrentQueue<string>)
    =
    cluster.CreateTopic(topic, 1)
    produceKeyed cluster topic 1 n

    let parse _ (event: Event<byte[]>) () =
        match event with
        | Message e ->
            let v = Encoding.UTF8.GetString e.Value

            if broken.Value && v = $"k0:{poison}" then
                invalidOp $"cannot parse {v}"

            (), Output.emit (Envelope.withValue v e)
        | _ -> (), Output.none

    Pipe.source<byte[]>
    |> Pipe.via (Stage.create "parse" () parse)
    |> Pipe.sink "record" (fun (v: string) ->
        sunk.Enqueue v
        Task.CompletedTask)

let private restartAndReplay =
    testCase
        "a poison message under the default policy is replayed, never committed past, reported as unhealthy with its partition, offset and key, and goes through once fixed"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        let broken = ref true
        let sunk = ConcurrentQueue<string>()
        let pipe = poisonedStage cluster "replay" 100 40 broken sunk
        let log = Log()
        let states = ConcurrentQueue<WorkflowState>()
        // Healthy again after 4 s without failure (Max); a group join takes about 1 s here, so the
        // failures in a row are not mistaken for healthy runs.
        let options = {
            options cluster log "replay" [ "replay" ] with
                OnFailure =
                    RestartAndReplay {
                        quick with
                            First = ms 100.
                            Max = seconds 4.
                    }
        }

        let handle = Workflow.run options pipe
        handle.StateChanged.Add states.Enqueue
        waitUntil log (seconds 20.) "two restarts" (fun () -> handle.Stats.Restarts >= 2L)
        let health = handle.Health
        Expect.isFalse (WorkflowHealth.isHealthy health) $"unhealthy: {WorkflowHealth.describe health}"
        Expect.isGreaterThanOrEqual health.ConsecutiveFailures 2 "consecutive failures"

        match health.LastFailure with
        | Some f ->
            Expect.equal f.TopicPartition (ValueSome(TopicPartition.create "replay" 0)) "partition"
            Expect.equal f.Offset (ValueSome 40L) "offset"
            Expect.equal f.Key (ValueSome "k0") "key"
            Expect.equal f.Stage "parse" "stage"
            Expect.stringContains f.Error.Message "cannot parse k0:40" "exception"
        | None -> failtest "a last failure is reported"

        Expect.stringContains (WorkflowHealth.describe health) "replay[0] at offset 40 (key 'k0')" "described"

        Expect.isTrue
            (states
             |> Seq.exists (function
                 | WorkflowState.BackingOff _ -> true
                 | _ -> false))
            "BackingOff was raised"

        expectNotCommittedPast cluster "replay" "replay" 40L

        Expect.isFalse (Seq.contains "k0:40" sunk) "the poison message was never sunk"
        broken.Value <- false // the fix is deployed

        waitUntil log (seconds 20.) "every message is sunk" (fun () ->
            (Seq.distinct sunk |> Seq.length) >= 100)

        waitUntil log (seconds 20.) "running and healthy again" (fun () ->
            WorkflowHealth.isHealthy handle.Health)

        Expect.isTrue (isState "Running" handle.State) "running"
        stopped log handle
        Expect.isTrue (isState "Stopped" handle.State) "stopped"
        Expect.equal (committed cluster "replay" "replay" 1) [ 0, 100L ] "all committed after the fix"

/// An order as JSON carries it.
type Order = { Id: int; Amount: decimal }

let private deadLetterDeserialization =
    testCase
        "values that fail to deserialise go to the dead-letter topic with the failure headers, exactly once, and the stream continues"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("orders", 1)
        cluster.CreateTopic("orders-dlq", 1)

        let values = [
            for i in 0..19 ->
                match i with
                | 7 -> Encoding.UTF8.GetBytes "{not json"
                | 12 -> [||]
                | _ -> Encoding.UTF8.GetBytes $"""{{"id": {i}, "amount": {i}.5}}"""
        ]

        produceValues cluster "orders" values
        let sunk = ConcurrentQueue<Order>()

        let pipe =
            Pipe.source<byte[]>
            |> Deserialize.json<_, Order>
            |> Pipe.sink "record" (fun o ->
                sunk.Enqueue o
                Task.CompletedTask)

        let log = Log()

        let options = {
            options cluster log "orders" [ "orders" ] with
                OnStageFailure = Map [ Deserialize.StageName, DeadLetter "orders-dlq" ]
        }

        let handle = Workflow.run options pipe
        waitUntil log (seconds 20.) "18 orders are sunk" (fun () -> sunk.Count >= 18)
        let dead = readAll cluster log "orders-dlq" 2
        stopped log handle

        Expect.equal
            (sunk |> Seq.map _.Id |> List.ofSeq)
            [
                for i in 0..19 do
                    if i <> 7 && i <> 12 then
                        i
            ]
            "the others, in order"

        Expect.equal (dead |> List.map (header "kflow.source.offset")) [ "7"; "12" ] "the two bad offsets"

        Expect.equal
            (dead |> List.map (fun d -> d.Message.Value))
            [ values[7]; values[12] ]
            "the original values"

        Expect.equal (dead |> List.map (fun d -> d.Message.Key)) [ "k"; "k" ] "the original keys"

        for d in dead do
            Expect.equal (header "kflow.source.topic" d) "orders" "source topic"
            Expect.equal (header "kflow.source.partition" d) "0" "source partition"
            Expect.equal (header "kflow.stage" d) "deserialize" "stage"
            Expect.equal (header "kflow.error.type" d) "KFlow.Kafka.DeserializationException" "error type"
            Expect.equal (header "kflow.attempts" d) "1" "tried once"
            Expect.isTrue (DateTimeOffset.TryParse(header "kflow.timestamp" d) |> fst) "a timestamp"

        Expect.stringContains (header "kflow.error.message" dead[0]) "orders[0] at offset 7" "names where"
        Expect.stringContains (header "kflow.error.message" dead[1]) "the value is empty" "names the reason"
        Expect.equal (readAll cluster log "orders-dlq" 2 |> List.length) 2 "exactly two dead letters"
        Expect.equal handle.Stats.Restarts 0L "no restart"
        Expect.equal (committed cluster "orders" "orders" 1) [ 0, 20L ] "everything committed"

/// A sink that fails while `broken`, counting its failures.
let private flakySink
    (broken: bool ref)
    (failures: int ref)
    (poison: string)
    (sunk: ConcurrentQueue<string>)
    =
    fun (v: string) ->
        task {
            do! Task.Yield()

            if broken.Value && v = poison then
                Interlocked.Increment &failures.contents |> ignore
                raise (TimeoutException $"the sink timed out on {v}")

            sunk.Enqueue v
        }
        :> Task

let private retryInPlace =
    testCase
        "a sink failing transiently is retried in place with backoff: no restart, nothing committed past it meanwhile, everything arrives once"
    <| fun () ->
        use cluster = clusterWith "flaky" 1 1 50
        let broken, failures = ref true, ref 0
        let sunk = ConcurrentQueue<string>()

        let pipe = decoded () |> Pipe.sink "db" (flakySink broken failures "k0:20" sunk)

        let log = Log()

        let options = {
            options cluster log "flaky" [ "flaky" ] with
                CommitInterval = ms 100.
                OnStageFailure = Map [ "db", RetryInPlace(1000, quick, Halt) ]
        }

        let handle = Workflow.run options pipe
        waitUntil log (seconds 20.) "five failed tries" (fun () -> failures.Value >= 5)
        Thread.Sleep 300 // three commit intervals: a commit past the failing write would show

        expectNotCommittedPast cluster "flaky" "flaky" 20L

        Expect.isTrue (isState "Running" handle.State) "still running (no restart)"
        broken.Value <- false // the dependency is back
        waitUntil log (seconds 20.) "every message is sunk" (fun () -> sunk.Count >= 50)
        stopped log handle
        Expect.sequenceEqual sunk [ for i in 0..49 -> $"k0:{i}" ] "each once, in order"
        Expect.equal handle.Stats.Restarts 0L "no restart"
        Expect.equal handle.Stats.Failures 0L "no failure escalated"
        Expect.isGreaterThan (log.Count "retrying in place") 0 "the retries are logged"
        Expect.equal (committed cluster "flaky" "flaky" 1) [ 0, 50L ] "everything committed"

let private defaultSinkRetries =
    testCase
        "by default a sink write failing twice is retried in place: no restart, no failure, every message once"
    <| fun () ->
        use cluster = clusterWith "twice" 1 1 20
        let tries = ref 0
        let sunk = ConcurrentQueue<string>()

        let pipe =
            decoded ()
            |> Pipe.sink "db" (fun v -> task {
                do! Task.Yield()

                if v = "k0:10" && Interlocked.Increment &tries.contents <= 2 then
                    raise (TimeoutException "the database timed out")

                sunk.Enqueue v
            })

        let log = Log()

        let handle =
            runUntilSunk cluster log (seconds 20.) sunk 20 (options cluster log "twice" [ "twice" ]) pipe

        Expect.sequenceEqual sunk [ for i in 0..19 -> $"k0:{i}" ] "each once, in order"
        Expect.equal tries.Value 3 "two failures, then success"
        Expect.equal handle.Stats.Restarts 0L "no restart"
        Expect.equal handle.Stats.Failures 0L "no failure escalated"

let private deadLetterAfterRetries =
    testCase
        "a sink still failing after its retries dead-letters the message (attempts counted) while produce requests fail transiently, and moves on"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("writes", 1)
        cluster.CreateTopic("writes-dlq", 1)
        produceKeyed cluster "writes" 1 30
        let failures = ref 0
        let sunk = ConcurrentQueue<string>()

        let pipe = decoded () |> Pipe.sink "db" (flakySink (ref true) failures "k0:10" sunk)

        let log = Log()

        let options = {
            options cluster log "writes" [ "writes" ] with
                OnStageFailure = Map [ "db", RetryInPlace(2, quick, DeadLetter "writes-dlq") ]
        }

        // The dead-letter producer's first produce requests are refused; its retries get through.
        cluster.PushRequestErrors(
            KafkaApiKey.Produce,
            ErrorCode.NotEnoughReplicas,
            ErrorCode.RequestTimedOut,
            ErrorCode.NotLeaderForPartition
        )

        let handle = Workflow.run options pipe
        waitUntil log (seconds 20.) "29 messages are sunk" (fun () -> sunk.Count >= 29)
        let dead = readAll cluster log "writes-dlq" 1
        stopped log handle
        cluster.ClearRequestErrors KafkaApiKey.Produce
        Expect.equal failures.Value 3 "tried 3 times"
        Expect.equal (header "kflow.attempts" dead[0]) "3" "attempts header"
        Expect.equal (header "kflow.stage" dead[0]) "db" "stage header"
        Expect.equal (header "kflow.error.type" dead[0]) "System.TimeoutException" "error type"
        Expect.equal (Encoding.UTF8.GetString dead[0].Message.Value) "k0:10" "the original message"
        Expect.equal (readAll cluster log "writes-dlq" 1 |> List.length) 1 "exactly one dead letter"
        Expect.equal handle.Stats.Restarts 0L "no restart"
        Expect.equal (committed cluster "writes" "writes" 1) [ 0, 30L ] "everything committed"

let private deadLetterAsync =
    testCase
        "an async map still failing after its retries dead-letters its input and the stream continues in order"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("lookups", 1)
        cluster.CreateTopic("lookups-dlq", 1)
        produceKeyed cluster "lookups" 1 30
        let sunk = ConcurrentQueue<string>()

        let lookup (v: string) = task {
            do! Task.Yield()

            if v = "k0:4" then
                raise (InvalidOperationException "no such customer")

            return v.ToUpperInvariant()
        }

        let pipe =
            decoded ()
            |> Pipe.mapAsync 4 lookup
            |> Pipe.sink "record" (fun v ->
                sunk.Enqueue v
                Task.CompletedTask)

        let log = Log()

        let options = {
            options cluster log "lookups" [ "lookups" ] with
                OnStageFailure = Map [ "mapAsync", RetryInPlace(1, quick, DeadLetter "lookups-dlq") ]
        }

        let handle = Workflow.run options pipe
        waitUntil log (seconds 20.) "29 values are sunk" (fun () -> sunk.Count >= 29)
        let dead = readAll cluster log "lookups-dlq" 1
        stopped log handle

        Expect.sequenceEqual
            sunk
            [
                for i in 0..29 do
                    if i <> 4 then
                        $"K0:{i}"
            ]
            "the others, in order"

        Expect.equal (Encoding.UTF8.GetString dead[0].Message.Value) "k0:4" "the original message"
        Expect.equal (header "kflow.stage" dead[0]) "mapAsync" "stage"
        Expect.equal (header "kflow.attempts" dead[0]) "2" "tried twice"
        Expect.equal handle.Stats.Restarts 0L "no restart"
        Expect.equal (committed cluster "lookups" "lookups" 1) [ 0, 30L ] "everything committed"

let private deadLetterBatches =
    testCase
        "every message of a batch that fails after an aggregate (in a stage or in the sink) is dead-lettered with its headers, the others reach the sink, and the end offsets are committed"
    <| fun () ->
        // 2 partitions, 6 keys, 30 values per key: each key's substream makes three batches of 10.
        use cluster = clusterWith "batches" 2 6 180
        cluster.CreateTopic("batches-dlq", 1)
        let sunk = ConcurrentQueue<string>()
        let contains (v: string) (batch: string list) = List.contains v batch

        let pipe =
            decoded ()
            |> Pipe.demux (fun v -> v.Split(':')[0]) (fun sub ->
                sub
                |> Pipe.aggregate (Buffer.count 10)
                // A pure stage after the aggregate: the batch holding k4:3 (k4's values 0..9) fails.
                |> Pipe.map (fun batch ->
                    if contains "k4:3" batch then
                        invalidOp "cannot price k4:3"

                    batch))
            // The sink: the batch holding k1:15 (k1's values 10..19) fails on every try.
            |> Pipe.sink "db" (fun (batch: string list) -> task {
                do! Task.Yield()

                if contains "k1:15" batch then
                    raise (TimeoutException "the database rejected k1:15")

                for v in batch do
                    sunk.Enqueue v
            })

        let log = Log()

        let options = {
            options cluster log "batches" [ "batches" ] with
                OnFailure = DeadLetter "batches-dlq"
        }

        // Some dead-letter produce requests are refused first; the producer's retries get through.
        cluster.PushRequestErrors(KafkaApiKey.Produce, ErrorCode.NotEnoughReplicas, ErrorCode.RequestTimedOut)
        let handle = Workflow.run options pipe
        waitUntil log (seconds 30.) "160 messages are sunk" (fun () -> sunk.Count >= 160)
        let dead = readAll cluster log "batches-dlq" 20

        waitEndOffsetsCommitted cluster log (seconds 30.) "batches" "batches" 2

        stopped log handle
        cluster.ClearRequestErrors KafkaApiKey.Produce

        let value (cr: ConsumeResult<string, byte[]>) =
            Encoding.UTF8.GetString cr.Message.Value

        let failedBatches =
            set [ for i in 10..19 -> $"k1:{i}" ] + set [ for i in 0..9 -> $"k4:{i}" ]

        let everything = set [ for i in 0..179 -> $"k{i % 6}:{i / 6}" ]
        Expect.equal (set sunk) (everything - failedBatches) "every other message reaches the sink"
        Expect.equal sunk.Count 160 "each once"
        Expect.equal (dead |> List.map value |> set) failedBatches "all of both failed batches"
        Expect.equal (readAll cluster log "batches-dlq" 20 |> List.length) 20 "each dead-lettered once"
        // Where each source message was read, to check the position headers.
        let sources =
            readPartitions cluster log "batches" 2 180
            |> List.map (fun cr -> value cr, (string cr.Partition.Value, string cr.Offset.Value))
            |> Map.ofList

        for d in dead do
            let v = value d

            let stage, errorType, attempts =
                if v.StartsWith "k1:" then
                    "db", "System.TimeoutException", "4" // 1 + 3 sink retries
                else
                    "map", "System.InvalidOperationException", "1"

            Expect.equal d.Message.Key (v.Split(':')[0]) "the original key"
            Expect.equal (header "kflow.source.topic" d) "batches" "source topic"

            Expect.equal
                (header "kflow.source.partition" d, header "kflow.source.offset" d)
                sources[v]
                $"the source partition and offset of {v}"

            Expect.equal (header "kflow.stage" d) stage "stage"
            Expect.equal (header "kflow.error.type" d) errorType "error type"
            Expect.stringContains (header "kflow.error.message" d) "k" "error message"
            Expect.equal (header "kflow.attempts" d) attempts "attempts"
            Expect.isTrue (DateTimeOffset.TryParse(header "kflow.timestamp" d) |> fst) "a timestamp"

        Expect.equal handle.Stats.DeadLettered 20L "each dead letter counted once"
        Expect.equal handle.Stats.Restarts 0L "no restart"

/// Runs one SQL statement on a server.
let private sql (server: PostgresServer) (text: string) =
    use connection = new Npgsql.NpgsqlConnection(server.ConnectionString)
    connection.Open()
    use command = new Npgsql.NpgsqlCommand(text, connection)
    command.ExecuteScalar()

let private postgresRestarts =
    testCase
        "a PostgreSQL sink whose server restarts twice mid-stream: every message arrives in the table, and no committed offset ever passes a row not yet in it"
    <| fun () ->
        let n = 6000
        use cluster = clusterWith "rows" 2 8 n

        use server =
            Postgres.startWith {
                PostgresOptions.defaults with
                    AllowExternalServer = false
            }

        sql server "CREATE TABLE rows (p int, o bigint, v text, PRIMARY KEY (p, o))"
        |> ignore
        // Each insert statement takes at least 20 ms, so the stream lasts long enough to be hit.
        sql
            server
            "CREATE FUNCTION rows_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.02); \
             RETURN NULL; END $$; CREATE TRIGGER slow BEFORE INSERT ON rows FOR EACH STATEMENT \
             EXECUTE FUNCTION rows_slow()"
        |> ignore

        let rowCount () =
            try
                ValueSome(unbox<int64> (sql server "SELECT count(*) FROM rows"))
            with _ ->
                ValueNone // the server is restarting

        // Two tries only: a restart outlasts them, so the workflow's retries in place take over.
        let writer =
            UpsertConfig.create
                (PgConnection.ConnectionString server.ConnectionString)
                "rows"
                [ "p"; "o"; "v" ]
                [ "p"; "o" ]
                id
            |> UpsertConfig.withRetry {
                PgRetry.defaults with
                    MaxAttempts = 2
                    FirstDelay = ms 50.
            }
            |> UpsertWriter.create
            |> _.GetAwaiter().GetResult()

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.mapEnvelope (fun e -> [|
                box e.Position.TopicPartition.Partition
                box e.Position.Offset
                box (Encoding.UTF8.GetString e.Value)
            |])
            |> Pipe.aggregate (Buffer.count 100)
            |> Pipe.sink "db" (UpsertWriter.write writer)

        let log = Log()

        let options = {
            options cluster log "rows" [ "rows" ] with
                CommitInterval = ms 50.
        }

        // Samples the committed offsets, then checks every offset below them is in the table.
        let early = ConcurrentQueue<string>()
        let sampling = ref true
        let samples = ref 0

        let sampler =
            Task.Run(fun () ->
                while sampling.Value do
                    for p, o in committed cluster "rows" "rows" 2 do
                        if o > 0L then
                            try
                                let below =
                                    unbox<int64> (
                                        sql server $"SELECT count(*) FROM rows WHERE p = {p} AND o < {o}"
                                    )

                                Interlocked.Increment &samples.contents |> ignore

                                if below <> o then
                                    early.Enqueue $"partition {p} committed {o} with {below} rows below it"
                            with _ ->
                                () // the server is restarting

                    Thread.Sleep 10)

        let handle = Workflow.run options pipe

        for part in [ 3; 3 * 2 ] do
            waitUntil log (seconds 60.) $"{part}/9 of the rows are in the table" (fun () ->
                rowCount () |> ValueOption.exists (fun c -> c >= int64 (n * part / 9)))

            server.Restart()

        waitUntil log (seconds 60.) "every row is in the table" (fun () -> rowCount () = ValueSome(int64 n))

        waitEndOffsetsCommitted cluster log (seconds 30.) "rows" "rows" 2

        sampling.Value <- false
        sampler.Wait()
        stopped log handle
        Expect.isEmpty early "no offset was committed before its row was in the table"
        Expect.isGreaterThan samples.Value 10 "the commits were sampled while the stream ran"

        Expect.isGreaterThan writer.Retries 0L "the restarts hit the stream: the writer retried"

        Expect.isGreaterThan
            (log.Count "retrying in place")
            0
            "a restart outlasted the writer's two tries: the workflow retried the write in place"

        let values = unbox<int64> (sql server "SELECT count(DISTINCT v) FROM rows")

        Expect.equal values (int64 n) "each message's value once"

let private commitErrors =
    testCase
        "offset commits refused by the broker lose nothing: everything arrives and the stop commits the end offsets"
    <| fun () ->
        use cluster = clusterWith "commits" 1 4 400
        let sunk = ConcurrentQueue<string>()

        let pipe =
            decoded ()
            |> Pipe.sink "record" (fun v ->
                sunk.Enqueue v
                Task.CompletedTask)

        let log = Log()

        let options = {
            options cluster log "commits" [ "commits" ] with
                CommitInterval = ms 100.
        }

        cluster.PushRequestErrors(KafkaApiKey.OffsetCommit, Array.replicate 6 ErrorCode.RequestTimedOut)

        // A periodic commit refused by the broker is not retried until the partition's offset moves
        // again (librdkafka commits stored offsets that changed); the stop commits synchronously, so
        // the end offsets are committed (checked by runUntilSunk).
        let handle = runUntilSunk cluster log (seconds 20.) sunk 400 options pipe
        Expect.isGreaterThan (log.Count "Request timed out") 0 "commits were refused"
        Expect.equal (sunk |> Seq.distinct |> Seq.length) 400 "every message"
        Expect.equal handle.Stats.Restarts 0L "no restart"

let private haltPerStage =
    testCase
        "a Halt override on one stage fails the workflow with that stage's error; the state is Failed with the failure"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        let sunk = ConcurrentQueue<string>()
        let pipe = poisonedStage cluster "stop" 20 5 (ref true) sunk
        let log = Log()

        let options = {
            options cluster log "stop" [ "stop" ] with
                OnStageFailure = Map [ "parse", Halt ]
        }

        let handle = Workflow.run options pipe

        match ended log handle with
        | :? WorkflowFailedException as e ->
            Expect.equal e.Stage "parse" "the stage"
            Expect.equal e.Offset (ValueSome 5L) "the offset"
            Expect.equal e.Key (ValueSome "k0") "the key"
            Expect.stringContains e.Message "stop[0] at offset 5 (key 'k0')" "the message says where"
        | other -> failtestf "expected a WorkflowFailedException, got %O" other

        match handle.State with
        | WorkflowState.Failed f -> Expect.equal f.Offset (ValueSome 5L) "Failed carries the failure"
        | other -> failtestf "expected Failed, got %A" other

        Expect.equal handle.Stats.Restarts 0L "no restart"

        expectNotCommittedPast cluster "stop" "stop" 5L

let private startFailure (options: WorkflowOptions) (setting: string) (says: string) =
    let log = Log()

    let handle =
        Workflow.run
            { options with Log = log.Add }
            (Pipe.source<byte[]> |> Pipe.sink "none" (fun _ -> Task.CompletedTask))

    match ended log handle with
    | :? WorkflowStartException as e ->
        Expect.equal e.Setting setting "the setting"
        Expect.stringContains e.Message says "the message"
    | other -> failtestf "expected a WorkflowStartException, got %O" other

    match handle.State with
    | WorkflowState.Failed f -> Expect.equal f.Stage "start" "failed at start"
    | other -> failtestf "expected Failed, got %A" other

let private badConfiguration =
    testList "bad configuration fails at start, naming the setting" [
        testCase "an unknown topic"
        <| fun () ->
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("known", 1)
            let o = options cluster (Log()) "unknown" [ "known"; "missing" ]
            startFailure o "Topics" "'missing'"

        testCase "unreachable bootstrap servers"
        <| fun () ->
            let o = {
                WorkflowOptions.create "nowhere" "127.0.0.1:1" "nowhere" [ "t" ] with
                    StartTimeout = seconds 1.
            }

            startFailure o "BootstrapServers" "127.0.0.1:1"

        testCase "an invalid librdkafka property value"
        <| fun () ->
            let o = {
                WorkflowOptions.create "bad" "127.0.0.1:1" "bad" [ "t" ] with
                    Properties = [ "session.timeout.ms", "soon" ]
            }

            Expect.throwsC (fun () -> Workflow.run o Pipe.source<byte[]> |> ignore) (fun e ->
                Expect.isTrue (e :? ArgumentException) "an ArgumentException"
                Expect.stringContains e.Message "session.timeout.ms" "names the property"
                Expect.stringContains e.Message "WorkflowOptions.Properties" "names the option")

        testCase "a missing group id"
        <| fun () ->
            let o = WorkflowOptions.create "nogroup" "127.0.0.1:1" "" [ "t" ]

            Expect.throwsC (fun () -> Workflow.run o Pipe.source<byte[]> |> ignore) (fun e ->
                Expect.isTrue (e :? ArgumentException) "an ArgumentException"
                Expect.stringContains e.Message "GroupId" "names GroupId")
    ]

let tests =
    testSequenced
    <| testList "Supervision" [
        restartAndReplay
        deadLetterDeserialization
        retryInPlace
        defaultSinkRetries
        deadLetterAfterRetries
        deadLetterAsync
        deadLetterBatches
        postgresRestarts
        commitErrors
        haltPerStage
        badConfiguration
    ]
