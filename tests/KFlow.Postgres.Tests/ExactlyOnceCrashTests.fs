// The exactly-once mode end to end, with SIGKILL: the workflow of tests/support/KFlow.Postgres.CrashChild
// (map → demux by key → aggregate → exactly-once sink into an insert-only table) is killed at random
// moments and restarted; every message must end up in the table exactly once.
module KFlow.Postgres.Tests.ExactlyOnceCrashTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow.Tests
open KFlow.Testing
open KFlow.Postgres.Tests.TestDatabase

let private seconds (n: float) = TimeSpan.FromSeconds n

/// Lines of the child's log (printed when the test fails).
type private Log() =
    let lines = ConcurrentQueue<string>()
    member _.Add(line: string) = lines.Enqueue line

    member _.Count(part: string) =
        lines |> Seq.filter (fun l -> l.Contains part) |> Seq.length

    member _.Tail = lines |> Seq.rev |> Seq.truncate 60 |> Seq.rev |> String.concat "\n"

/// A running child workflow, killed or stopped by the test.
type private Child(args: string list, log: Log) =
    let psi =
        ProcessStartInfo(
            "dotnet",
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true
        )

    do
        psi.ArgumentList.Add(
            BuiltProgram.dll "tests/support/KFlow.Postgres.CrashChild" "KFlow.Postgres.CrashChild"
        )

        for a in args do
            psi.ArgumentList.Add a

    let ready = new ManualResetEventSlim()

    let proc =
        match Process.Start psi with
        | null -> failwith "dotnet did not start."
        | p -> p

    do
        proc.OutputDataReceived.Add(fun e ->
            match e.Data with
            | "READY" -> ready.Set()
            | _ -> ())

        proc.ErrorDataReceived.Add(fun e ->
            match e.Data with
            | null -> ()
            | line -> log.Add $"child: {line}")

        proc.BeginOutputReadLine()
        proc.BeginErrorReadLine()

    member _.WaitReady(within: TimeSpan) =
        if not (ready.Wait within) then
            failtestf "The child printed no READY within %O.\nLog:\n%s" within log.Tail

    member _.Kill() =
        proc.Kill()
        proc.WaitForExit()

    member _.Stop() =
        use kill = Process.Start("kill", [ "-TERM"; string proc.Id ])
        kill.WaitForExit()

        if not (proc.WaitForExit 30_000) then
            failtestf "The child did not stop within 30 s.\nLog:\n%s" log.Tail

        proc.WaitForExit()
        proc.ExitCode

    interface IDisposable with
        member _.Dispose() =
            if not proc.HasExited then
                proc.Kill()
                proc.WaitForExit()

            proc.Dispose()
            ready.Dispose()

/// Produces keyed messages in the background until finished; remembers the delivered positions.
type private Stream(cluster: EmbeddedKafkaCluster, topic: string) =
    let producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()
    let delivered = ConcurrentBag<int * int64>()
    let mutable failed = 0
    let stop = new CancellationTokenSource()

    let run =
        Task.Run(fun () ->
            let mutable i = 0

            while not stop.IsCancellationRequested do
                for _ in 1..40 do
                    producer.Produce(
                        topic,
                        Message<_, _>(Key = $"k{i % 64}", Value = string i),
                        fun (report: DeliveryReport<string, string>) ->
                            if report.Error.IsError then
                                Interlocked.Increment &failed |> ignore
                            else
                                delivered.Add(report.Partition.Value, report.Offset.Value)
                    )

                    i <- i + 1

                Thread.Sleep 20)

    member _.Finish() =
        stop.Cancel()
        run.Wait()
        producer.Flush(seconds 60.) |> ignore
        Expect.equal failed 0 "every message is delivered"
        Set.ofSeq delivered

    interface IDisposable with
        member _.Dispose() =
            stop.Cancel()
            run.Wait()
            producer.Dispose()
            stop.Dispose()

let private committed (cluster: EmbeddedKafkaCluster) group topic partitions =
    use consumer = ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig group).Build()

    consumer.Committed([ for p in 0 .. partitions - 1 -> TopicPartition(topic, Partition p) ], seconds 10.)
    |> Seq.map (fun c -> c.Partition.Value, c.Offset.Value)
    |> Seq.sortBy fst
    |> List.ofSeq

let private endOffsets (cluster: EmbeddedKafkaCluster) topic partitions =
    use consumer =
        ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig "watermarks").Build()

    [
        for p in 0 .. partitions - 1 ->
            p, consumer.QueryWatermarkOffsets(TopicPartition(topic, Partition p), seconds 10.).High.Value
    ]

/// (partition, source offset) → rows in the table.
let private rowsPerMessage (table: string) =
    query $"SELECT partition, src_offset, count(*) FROM {table} GROUP BY partition, src_offset"
    |> List.map (fun r -> (unbox<int> r[0], unbox<int64> r[1]), unbox<int64> r[2])
    |> Map.ofList

let private duplicates (rows: Map<int * int64, int64>) =
    rows |> Map.filter (fun _ n -> n > 1L) |> Map.toList |> List.truncate 10

let private waitUntil (log: Log) (within: TimeSpan) (what: string) (condition: unit -> bool) =
    let deadline = DateTime.UtcNow + within

    while not (condition ()) do
        if DateTime.UtcNow > deadline then
            failtestf "Not within %O: %s.\nLog:\n%s" within what log.Tail

        Thread.Sleep 100

let private killCycles () =
    use cluster = EmbeddedKafka.start 1
    let topic, group, partitions = "exactly", "exactly", 4
    cluster.CreateTopic(topic, partitions)
    let table = freshTable ()

    execute
        $"CREATE TABLE {table} (topic text NOT NULL, partition int NOT NULL, src_offset bigint NOT NULL, key text)"

    let fast =
        FastClientSettings.consumer
        |> Seq.filter (fun kv -> kv.Key <> "auto.offset.reset")
        |> Seq.map (fun kv -> $"{kv.Key}={kv.Value}")
        |> List.ofSeq

    let args =
        [ cluster.BootstrapServers; topic; group; connectionString (); table ] @ fast

    let log = Log()
    let seed = Environment.TickCount
    let random = Random seed
    let cycles = 5
    use stream = new Stream(cluster, topic)

    for cycle in 1..cycles do
        use child = new Child(args, log)
        child.WaitReady(seconds 60.)
        Thread.Sleep(random.Next(200, 1500))
        child.Kill()
        log.Add $"test: killed the child of cycle {cycle}"

        Expect.isEmpty
            (duplicates (rowsPerMessage table))
            $"cycle {cycle} (seed {seed}): no message applied twice.\nLog:\n{log.Tail}"

    let produced = stream.Finish()
    let ends = endOffsets cluster topic partitions
    use child = new Child(args, log)
    child.WaitReady(seconds 60.)

    waitUntil log (seconds 90.) "every produced message is in the table" (fun () ->
        let rows = rowsPerMessage table
        produced |> Set.forall rows.ContainsKey)

    waitUntil log (seconds 30.) "the end offsets are committed" (fun () ->
        committed cluster group topic partitions = ends)

    Expect.equal (child.Stop()) 0 "the last child stops cleanly"
    let rows = rowsPerMessage table
    Expect.isEmpty (duplicates rows) $"no message applied twice (seed {seed})"
    Expect.equal (rows |> Map.keys |> Set.ofSeq) produced "every produced message, nothing else"
    Expect.equal (committed cluster group topic partitions) ends "the committed offsets are the end offsets"
    // The sink refuses a batch that overlaps applied offsets; the runtime must never have offered one.
    Expect.equal (log.Count "applied already by another write") 0 "no batch overlapped applied offsets"
    let resumed = log.Count "exactly-once: resuming at"
    let skipped = log.Count "will be skipped"

    Expect.isGreaterThan
        (resumed + skipped)
        0
        "some restart found applied offsets past Kafka's committed ones (the test was not vacuous)"

    printfn
        "exactly-once crash (seed %d): %d SIGKILL cycles, %d messages, each once in the table; %d partition \
         restarts resumed past applied offsets, %d skipped applied offsets after a gap"
        seed
        cycles
        produced.Count
        resumed
        skipped

let tests =
    testSequenced
    <| testList "Exactly-once crash" [
        testCase
            "SIGKILL cycles of map → demux → aggregate → exactly-once sink leave every message once in an insert-only table"
            killCycles
    ]
