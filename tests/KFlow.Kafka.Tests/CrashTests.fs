// Crash and rebalance tests of the runtime with a real child process: the workflow of
// tests/support/KFlow.Kafka.CrashChild is killed with SIGKILL at random moments and restarted, or
// killed while it shares a group with in-process instances. Its file sink lives outside the child,
// so what was sunk before a kill can be compared with what the group committed.
module KFlow.Kafka.Tests.CrashTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Text
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow.Tests
open KFlow
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka
open KFlow.Tests.CrashHarness
open KFlow.Testing

let private seconds (n: float) = TimeSpan.FromSeconds n

let private childDll () =
    BuiltProgram.dll "tests/support/KFlow.Kafka.CrashChild" "KFlow.Kafka.CrashChild"

/// A child running the crash workflow on `topic` in `group`, sinking into `sinkFile`.
let private startChild (cluster: EmbeddedKafkaCluster) topic group (sinkFile: string) log =
    new Child(childDll (), [ cluster.BootstrapServers; topic; group; sinkFile ] @ childProperties, log)

/// The (partition, offset) of every complete line of the sink file, with repetitions; a last line
/// cut by a kill (no newline) is not counted: its write never completed.
let private sunkLines (topic: string) (file: string) =
    use stream =
        new FileStream(file, FileMode.OpenOrCreate, FileAccess.Read, FileShare.ReadWrite ||| FileShare.Delete)

    use reader = new StreamReader(stream, Encoding.UTF8)
    let text = reader.ReadToEnd()
    let complete = text.Substring(0, text.LastIndexOf '\n' + 1)

    [
        for line in complete.Split('\n', StringSplitOptions.RemoveEmptyEntries) do
            match line.Split ' ' with
            | [| t; p; o; _ |] when t = topic -> int p, int64 o
            | _ -> failtestf "a malformed line in the sink file: '%s'" line
    ]

/// The offsets below a group's committed offset that the sink does not hold (none when the commit
/// never passed an unsunk message; the topic has no offset gaps).
let private unsunkBelowCommitted (committed: (int * int64) list) (sunk: Set<int * int64>) = [
    for p, c in committed do
        for o in 0L .. c - 1L do
            if not (sunk.Contains(p, o)) then
                p, o
]

/// The end state of a run: every produced message sunk at least once, nothing else sunk, and the
/// group's committed offsets at the end offsets.
let private expectAllSunkAndCommitted
    (produced: Set<int * int64>)
    (sunk: Set<int * int64>)
    committedNow
    ends
    =
    Expect.isTrue (Set.isSubset produced sunk) "every produced message sunk at least once"
    Expect.equal sunk.Count produced.Count "nothing sunk that was not produced"
    Expect.equal committedNow ends "the committed offsets are the end offsets"

let private killCycles () =
    use cluster = EmbeddedKafka.start 1
    let topic, group, partitions = "crash", "crash", 8
    cluster.CreateTopic(topic, partitions)
    let file = Path.Combine(Path.GetTempPath(), $"kflow-crash-{Guid.NewGuid():N}.txt")
    let log = Log()
    let seed = Environment.TickCount
    let random = Random seed
    let cycles = 5
    let mutable committedAtKills = []
    let mutable readyTimes = []

    try
        use stream = new KeyedStream(cluster, topic, 64, 40)

        for cycle in 1..cycles do
            use child = startChild cluster topic group file log
            readyTimes <- (child.WaitReady(seconds 30.)).TotalSeconds :: readyTimes
            Thread.Sleep(random.Next(0, 1500))
            child.Kill()
            log.Add $"test: killed the child of cycle {cycle}"
            // Committed first, then the file: what the file holds now it held at the kill.
            let committed = committed cluster group topic partitions
            let sunk = sunkLines topic file |> Set.ofList
            let missing = unsunkBelowCommitted committed sunk

            Expect.isEmpty
                (List.truncate 10 missing)
                $"cycle {cycle} (seed {seed}): committed {committed} passed unsunk offsets.\nLog:\n{log.Tail}"

            committedAtKills <- (committed |> List.sumBy (fun (_, c) -> max 0L c)) :: committedAtKills

        let produced = stream.Finish()
        let ends = endOffsets cluster topic partitions
        use child = startChild cluster topic group file log
        child.WaitReady(seconds 30.) |> ignore

        waitUntil log (seconds 60.) "every produced message is in the sink file" (fun () ->
            Set.isSubset produced (sunkLines topic file |> Set.ofList))

        waitUntil log (seconds 30.) "the end offsets are committed" (fun () ->
            committed cluster group topic partitions = ends)

        Expect.equal (child.Stop()) 0 "the last child stops cleanly"
        let lines = sunkLines topic file
        let sunk = Set.ofList lines
        expectAllSunkAndCommitted produced sunk (committed cluster group topic partitions) ends

        let progress = List.rev committedAtKills

        Expect.isGreaterThan
            (List.last progress)
            0L
            "offsets were committed before the last kill (the check above was not vacuous)"

        printfn
            "runtime crash (seed %d): %d SIGKILL cycles, %d messages, %d sunk twice or more (re-processed after kills); committed at the kills: %A; each restart owned partitions after %s s"
            seed
            cycles
            produced.Count
            (lines.Length - sunk.Count)
            progress
            (readyTimes |> List.rev |> List.map (sprintf "%.1f") |> String.concat ", ")
    finally
        File.Delete file

let private threeInstances () =
    use cluster = EmbeddedKafka.start 1
    let topic, group, partitions = "shared3", "shared3", 8
    cluster.CreateTopic(topic, partitions)

    let file =
        Path.Combine(Path.GetTempPath(), $"kflow-rebalance-{Guid.NewGuid():N}.txt")

    let log = Log()
    let sunk = ConcurrentQueue<int * int64>()

    let pipe =
        Pipe.source<byte[]>
        |> Pipe.mapEnvelope (fun e -> e.Position.TopicPartition.Partition, e.Position.Offset)
        |> Pipe.demuxByKey (fun sub ->
            sub
            |> Pipe.aggregate (
                Buffer.create {
                    Buffer.options with
                        MaxCount = Some 50
                        MaxAge = Some(TimeSpan.FromMilliseconds 100.)
                }
            ))
        |> Pipe.sink "record" (fun (batch: (int * int64) list) -> task {
            do! Task.Delay 2

            for position in batch do
                sunk.Enqueue position
        })

    let options name = {
        options cluster log group [ topic ] with
            Name = name
            CommitInterval = TimeSpan.FromMilliseconds 200.
    }

    let allSunk () =
        Set.union (Set.ofSeq sunk) (sunkLines topic file |> Set.ofList)

    try
        use stream = new KeyedStream(cluster, topic, 64, 40)
        let a = Workflow.run (options "a") pipe
        waitUntil log (seconds 30.) "a has partitions" (fun () -> a.Stats.AssignedPartitions > 0)
        let b = Workflow.run (options "b") pipe
        use c = startChild cluster topic group file log
        c.WaitReady(seconds 30.) |> ignore

        waitUntil log (seconds 30.) "a, b and c share the 8 partitions" (fun () ->
            let a, b, c = a.Stats.AssignedPartitions, b.Stats.AssignedPartitions, c.Partitions
            a > 0 && b > 0 && c > 0 && a + b + c = partitions)

        Thread.Sleep 1000
        let aStopped = Stopwatch.StartNew()
        let stop = a.StopAsync()

        if not (stop.Wait(seconds 30.)) then
            failtestf "a's stop did not finish within 30 s.\nLog:\n%s" log.Tail

        Expect.equal a.Completion.Status TaskStatus.RanToCompletion "a stopped cleanly"

        waitUntil log (seconds 30.) "b and c share the 8 partitions" (fun () ->
            b.Stats.AssignedPartitions + c.Partitions = partitions && c.Partitions > 0)

        let afterStop = aStopped.Elapsed
        Thread.Sleep 500
        c.Kill()
        let killed = Stopwatch.StartNew()
        // Committed first, then the sinks: a commit can never be ahead of what was sunk.
        let atKill = committed cluster group topic partitions
        let missing = unsunkBelowCommitted atKill (allSunk ())
        Expect.isEmpty (List.truncate 10 missing) $"at the kill, committed {atKill} passed unsunk offsets"

        waitUntil log (seconds 30.) "b has every partition" (fun () ->
            b.Stats.AssignedPartitions = partitions)

        let takeover = killed.Elapsed
        Thread.Sleep 500
        let produced = stream.Finish()
        let ends = endOffsets cluster topic partitions
        waitUntil log (seconds 60.) "every message is sunk" (fun () -> Set.isSubset produced (allSunk ()))

        waitUntil log (seconds 30.) "the end offsets are committed" (fun () ->
            committed cluster group topic partitions = ends)

        let stopB = b.StopAsync()

        if not (stopB.Wait(seconds 30.)) then
            failtestf "b's stop did not finish within 30 s.\nLog:\n%s" log.Tail

        Expect.equal b.Completion.Status TaskStatus.RanToCompletion "b stopped cleanly"
        expectAllSunkAndCommitted produced (allSunk ()) (committed cluster group topic partitions) ends

        Expect.isGreaterThan a.Stats.Consumed 0L "a took part"
        Expect.isGreaterThan (sunkLines topic file).Length 0 "c took part"
        let total = sunk.Count + (sunkLines topic file).Length

        printfn
            "runtime 3 instances: %d messages; after a's stop began b and c shared the partitions in %.2f s; b owned all 8 %.2f s after c's SIGKILL; %d sunk twice or more"
            produced.Count
            afterStop.TotalSeconds
            takeover.TotalSeconds
            (total - produced.Count)
    finally
        File.Delete file

let tests =
    testSequenced
    <| testList "Crash" [
        testCase
            "a workflow killed with SIGKILL at random moments and restarted sinks every message, and its committed offsets never pass an unsunk one"
            killCycles
        testCase
            "three instances share 8 partitions; one stops gracefully and one is killed with SIGKILL mid-stream; the last sinks every message and commits the end offsets"
            threeInstances
    ]
