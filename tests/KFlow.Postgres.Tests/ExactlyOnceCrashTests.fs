// The exactly-once mode end to end, with SIGKILL: the workflow of tests/support/KFlow.Postgres.CrashChild
// (map → demux by key → aggregate → exactly-once sink into an insert-only table) is killed at random
// moments and restarted; every message must end up in the table exactly once.
module KFlow.Postgres.Tests.ExactlyOnceCrashTests

open System
open System.Threading
open Expecto
open KFlow.Tests
open KFlow.Tests.CrashHarness
open KFlow.Testing
open KFlow.Postgres.Tests.TestDatabase

let private seconds (n: float) = TimeSpan.FromSeconds n

let private childDll () =
    BuiltProgram.dll "tests/support/KFlow.Postgres.CrashChild" "KFlow.Postgres.CrashChild"

/// (partition, source offset) → rows in the table.
let private rowsPerMessage (table: string) =
    query $"SELECT partition, src_offset, count(*) FROM {table} GROUP BY partition, src_offset"
    |> List.map (fun r -> (unbox<int> r[0], unbox<int64> r[1]), unbox<int64> r[2])
    |> Map.ofList

let private duplicates (rows: Map<int * int64, int64>) =
    rows |> Map.filter (fun _ n -> n > 1L) |> Map.toList |> List.truncate 10

let private killCycles () =
    use cluster = EmbeddedKafka.start 1
    let topic, group, partitions = "exactly", "exactly", 4
    cluster.CreateTopic(topic, partitions)
    let table = freshTable ()

    execute
        $"CREATE TABLE {table} (topic text NOT NULL, partition int NOT NULL, src_offset bigint NOT NULL, key text)"

    let args =
        [ cluster.BootstrapServers; topic; group; connectionString (); table ]
        @ childProperties

    let log = Log()
    let seed = Environment.TickCount
    let random = Random seed
    let cycles = 5
    use stream = new KeyedStream(cluster, topic, 64, 40)

    for cycle in 1..cycles do
        use child = new Child(childDll (), args, log)
        child.WaitReady(seconds 60.) |> ignore
        Thread.Sleep(random.Next(200, 1500))
        child.Kill()
        log.Add $"test: killed the child of cycle {cycle}"

        Expect.isEmpty
            (duplicates (rowsPerMessage table))
            $"cycle {cycle} (seed {seed}): no message applied twice.\nLog:\n{log.Tail}"

    let produced = stream.Finish()
    let ends = endOffsets cluster topic partitions
    use child = new Child(childDll (), args, log)
    child.WaitReady(seconds 60.) |> ignore

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
