// Tests for src/KFlow.Core/Pipe.fs: composition, demux (per-key order, idle eviction, join),
// routeDependent, mfd, mapAsync and sinks, run through the test driver.
module KFlow.Core.Tests.PipeTests

open System
open System.Threading.Tasks
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0
let private ignoreWrite _ = Task.CompletedTask

/// Values are "key:n".
let private keyOf (s: string) = s.Split(':')[0]

let private feed values d =
    d
    |> TestDriver.feedAll (values |> List.mapi (fun i v -> Message.create tp (int64 i) (keyOf v) v))

/// Demux options dropping a substream after 1 s without messages.
let private idleAfterOneSecond = {
    Pipe.demuxOptions with
        IdleAfter = TimeSpan.FromSeconds 1.0
}

/// Feeds values 0..4 with the Kafka keys x, y, x, z, y to `pipe` (which batches two per key) and checks
/// the per-key batches and the commit point; returns the driver for more checks.
let private batchesPerKafkaKey (pipe: Pipe<int, int list>) =
    let d =
        pipe
        |> Pipe.sink "db" ignoreWrite
        |> TestDriver.start
        |> TestDriver.assign tp
        |> TestDriver.feedAll [
            for o, key in List.indexed [ "x"; "y"; "x"; "z"; "y" ] -> Message.create tp (int64 o) key o
        ]

    let batches: int list list = TestDriver.written "db" d
    Expect.equal batches [ [ 0; 2 ]; [ 1; 4 ] ] "per-key batches in order"
    Expect.equal (TestDriver.committed tp d) 3L "z (offset 3) is still buffered"
    d

let tests =
    testList "Pipe" [
        test "stages compose with |> and run in order" {
            let d =
                Pipe.source<int>
                |> Pipe.map (fun x -> x + 1)
                |> Pipe.filter (fun x -> x % 2 = 0)
                |> Pipe.unfold (fun x -> [ x; -x ])
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 3L -> Message.create tp o "k" (int o) ]

            Expect.equal (TestDriver.outputs d |> List.map (fun e -> e.Value)) [ 2; -2; 4; -4 ] "outputs"
            Expect.equal (TestDriver.committed tp d) 4L "all finished"
        }
        test "demux keeps per-key order and batches per key" {
            let d =
                Pipe.source<string>
                |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
                |> Pipe.sink "db" ignoreWrite
                |> TestDriver.start
                |> TestDriver.assign tp
                |> feed [ "a:1"; "b:1"; "a:2"; "c:1"; "b:2"; "a:3"; "a:4" ]

            let batches: string list list = TestDriver.written "db" d

            Expect.equal
                batches
                [ [ "a:1"; "a:2" ]; [ "b:1"; "b:2" ]; [ "a:3"; "a:4" ] ]
                "per-key batches in order"

            Expect.equal (TestDriver.committed tp d) 3L "c:1 (offset 3) is still buffered"
            Expect.equal (TestDriver.liveSubstreams d) 3 "a, b and c"
        }
        test "demuxByKey splits by the Kafka message key, which the values need not carry" {
            let d =
                Pipe.source<int>
                |> Pipe.demuxByKey (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
                |> batchesPerKafkaKey

            Expect.equal (TestDriver.liveSubstreams d) 3 "x, y and z"
        }
        test "demuxByKeyWith drops idle substreams and refuses a non-positive idle time" {
            let d =
                Pipe.source<int>
                |> Pipe.demuxByKeyWith idleAfterOneSecond (fun sub -> sub |> Pipe.aggregate (Buffer.count 10))
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ Message.create tp 0L "x" 0; Message.create tp 1L "y" 1 ]
                |> TestDriver.advance (TimeSpan.FromSeconds 2.0)

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Key, e.Value))
                [ "x", [ 0 ]; "y", [ 1 ] ]
                "flushed"

            Expect.equal (TestDriver.liveSubstreams d) 0 "dropped"

            Expect.throwsT<ArgumentException>
                (fun () ->
                    Pipe.source<int>
                    |> Pipe.demuxByKeyWith { IdleAfter = TimeSpan.Zero } id
                    |> ignore)
                "zero idle time"
        }
        test "idle substreams are flushed and dropped, so memory follows live keys" {
            let options = {
                Pipe.demuxOptions with
                    IdleAfter = TimeSpan.FromSeconds 30.0
            }

            let d =
                Pipe.source<string>
                |> Pipe.demuxWith options keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 10))
                |> Pipe.sink "db" ignoreWrite
                |> TestDriver.start
                |> TestDriver.assign tp
                |> feed [ "a:1"; "b:1" ]
                |> TestDriver.advance (TimeSpan.FromSeconds 20.0)
                |> TestDriver.feed (Message.create tp 2L "a" "a:2")
                |> TestDriver.advance (TimeSpan.FromSeconds 10.0)

            Expect.equal (TestDriver.liveSubstreams d) 1 "b was idle 30 s; a only 10 s"

            Expect.equal
                (TestDriver.written "db" d)
                [ [ "b:1" ] ]
                "b's buffer was flushed before it was dropped"

            let d = d |> TestDriver.advance (TimeSpan.FromSeconds 20.0)
            Expect.equal (TestDriver.liveSubstreams d) 0 "a dropped too"
            Expect.equal (TestDriver.committed tp d) 3L "everything sunk"
        }
        test "substreams of many keys seen once do not accumulate" {
            let d =
                (Pipe.source<string>
                 |> Pipe.demuxWith idleAfterOneSecond keyOf id
                 |> TestDriver.start
                 |> TestDriver.assign tp,
                 [ 0..99 ])
                ||> List.fold (fun d i ->
                    d
                    |> TestDriver.feed (Message.create tp (int64 i) "" (sprintf "k%d:1" i))
                    |> TestDriver.advance (TimeSpan.FromSeconds 1.0))

            Expect.equal (TestDriver.liveSubstreams d) 0 "100 keys seen, none live"
            Expect.equal (TestDriver.outputs d |> List.length) 100 "joined back"
        }
        test "routeDependent runs a different sub-pipe per key" {
            let d =
                Pipe.source<string>
                |> Pipe.routeDependent keyOf (fun key sub ->
                    if key = "upper" then
                        sub |> Pipe.map (fun s -> s.ToUpperInvariant())
                    else
                        sub |> Pipe.filter (fun _ -> false))
                |> TestDriver.start
                |> TestDriver.assign tp
                |> feed [ "upper:x"; "drop:y"; "upper:z" ]

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Value))
                [ "UPPER:X"; "UPPER:Z" ]
                "routed"

            Expect.equal (TestDriver.committed tp d) 3L "the dropped one completed"
        }
        test "a routeDependent route that throws fails the message of its key's first arrival, not the run" {
            let d =
                Pipe.source<string>
                |> Pipe.routeDependent keyOf (fun key sub ->
                    if key = "bad" then
                        failwith "no route"
                    else
                        sub |> Pipe.map id)
                |> TestDriver.start
                |> TestDriver.assign tp
                |> feed [ "good:x"; "bad:y"; "good:z" ]

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Value))
                [ "good:x"; "good:z" ]
                "good passes"

            Expect.equal
                (TestDriver.failures d |> List.map (fun f -> f.Stage))
                [ "routeDependent" ]
                "the route's failure is reported as the routeDependent stage's"

            Expect.equal (TestDriver.committed tp d) 1L "bad:y (offset 1) stays open"
        }
        test "mfd maps, filters and demuxes in one step" {
            let d =
                Pipe.source<int>
                |> Pipe.mfd (fun x -> if x < 0 then None else Some(string (x % 2), x * 10)) (fun sub ->
                    sub |> Pipe.aggregate (Buffer.count 2))
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [
                    for o, v in [ 0L, 1; 1L, -1; 2L, 2; 3L, 3; 4L, 4 ] -> Message.create tp o "" v
                ]

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Key, e.Value))
                [ "1", [ 10; 30 ]; "0", [ 20; 40 ] ]
                "keyed batches"

            Expect.equal (TestDriver.committed tp d) 5L "all finished"
        }
        test "mapAsync passes the task's result on with the input's token" {
            let d =
                Pipe.source<int>
                |> Pipe.mapAsync 4 (fun x -> Task.FromResult(x * 3))
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feed (Message.create tp 7L "k" 2)

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Value, e.Position.Offset))
                [ 6, 7L ]
                "mapped"

            Expect.equal (TestDriver.committed tp d) 8L "finished"

            Expect.throwsT<ArgumentException>
                (fun () -> Pipe.source<int> |> Pipe.mapAsync 0 Task.FromResult |> ignore)
                "parallelism 0"
        }
        test "deferred mapAsync keeps input order, bounds calls in flight, and commits after results" {
            let deferred = {
                TestDriver.options with
                    AsyncMode = Defer
            }

            let d =
                Pipe.source<int>
                |> Pipe.mapAsync 2 (fun x -> Task.FromResult(x * 10))
                |> TestDriver.create deferred
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 3L -> Message.create tp o "k" (int o) ]

            let pendingIds d =
                TestDriver.asyncCalls d
                |> List.filter (fun c -> c.Status = Pending)
                |> List.map (fun c -> c.Id)

            Expect.equal (pendingIds d) [ 1; 2 ] "two in flight, two waiting"
            let d = d |> TestDriver.runAsync 2
            Expect.isEmpty (TestDriver.outputs d) "2's result waits for 1's"
            Expect.equal (TestDriver.committed tp d) 0L "nothing finished"
            let d = d |> TestDriver.runAsync 1
            Expect.equal (TestDriver.outputs d |> List.map (fun e -> e.Value)) [ 0; 10 ] "in input order"
            Expect.equal (pendingIds d) [ 3; 4 ] "the waiting inputs started"
            let d = d |> TestDriver.succeedAll
            Expect.equal (TestDriver.outputs d |> List.map (fun e -> e.Value)) [ 0; 10; 20; 30 ] "all"
            Expect.equal (TestDriver.committed tp d) 4L "all finished"
        }
        test "a failed async call leaves its offset open, and a crash abandons pending calls" {
            let deferred = {
                TestDriver.options with
                    AsyncMode = Defer
            }

            let d =
                Pipe.source<int>
                |> Pipe.mapAsync 4 (fun x -> Task.FromResult x)
                |> TestDriver.create deferred
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 2L -> Message.create tp o "k" (int o) ]
                |> TestDriver.failAsync 1 "timeout"
                |> TestDriver.runAsync 2

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Value))
                [ 1 ]
                "2 went on after 1 failed"

            Expect.equal (TestDriver.committed tp d) 0L "offset 0 open"
            Expect.equal (TestDriver.failures d |> List.length) 1 "reported"
            let d = d |> TestDriver.crash

            Expect.equal
                (TestDriver.asyncCalls d |> List.map (fun c -> c.Status))
                [ Failed "timeout"; Succeeded; Abandoned ]
                "statuses"

            let d = d |> TestDriver.replay |> TestDriver.succeedAll
            Expect.equal (TestDriver.committed tp d) 3L "replayed and finished"
        }
        test "a substream with an async call in flight is not dropped when idle" {
            let d =
                Pipe.source<string>
                |> Pipe.demuxWith idleAfterOneSecond keyOf (fun sub -> sub |> Pipe.mapAsync 1 Task.FromResult)
                |> TestDriver.create {
                    TestDriver.options with
                        AsyncMode = Defer
                }
                |> TestDriver.assign tp
                |> feed [ "a:1" ]
                |> TestDriver.advance (TimeSpan.FromSeconds 5.0)

            Expect.equal (TestDriver.liveSubstreams d) 1 "kept while busy"
            let d = d |> TestDriver.runAsync 1 |> TestDriver.advance (TimeSpan.FromSeconds 1.0)
            Expect.equal (TestDriver.outputs d |> List.map (fun e -> e.Value)) [ "a:1" ] "result joined back"
            Expect.equal (TestDriver.liveSubstreams d) 0 "dropped once idle"
            Expect.equal (TestDriver.committed tp d) 1L "finished"
        }
        test "split ... join runs the stages between per key, and the stages after join on the merged stream" {
            let d =
                Pipe.source<string>
                |> Pipe.split keyOf
                |> Pipe.aggregate (Buffer.count 2)
                |> Pipe.map (String.concat "+")
                |> Pipe.join
                |> Pipe.aggregate (Buffer.count 2)
                |> TestDriver.start
                |> TestDriver.assign tp
                |> feed [ "a:1"; "b:1"; "a:2"; "b:2" ]

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Value))
                [ [ "a:1+a:2"; "b:1+b:2" ] ]
                "merged after join"

            Expect.equal (TestDriver.committed tp d) 4L "all finished"
        }
        test "splitByKey ... join runs the stages between per Kafka key, like demuxByKey" {
            Pipe.source<int>
            |> Pipe.splitByKey
            |> Pipe.aggregate (Buffer.count 2)
            |> Pipe.join
            |> batchesPerKafkaKey
            |> ignore
        }
        test "a split without join runs to the end of the pipe; a join without split is refused" {
            let pipe = Pipe.source<string> |> Pipe.split keyOf |> Pipe.map id

            Expect.equal
                ((Pipe.describe pipe).Trim())
                (String.concat Environment.NewLine [ "demux (idle after 00:01:00)"; "  map"; "join" ])
                "closed at the end"

            Expect.throwsT<ArgumentException> (fun () -> Pipe.source<int> |> Pipe.join |> ignore) "no split"
        }
        test "a pipe is a walkable value: its nodes and outline" {
            let pipe =
                Pipe.source<string>
                |> Pipe.map id
                |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 3))
                |> Pipe.sink "db" ignoreWrite

            Expect.equal (Pipe.nodes pipe |> List.length) 3 "map, demux, sink"
            let outline = Pipe.describe pipe

            Expect.equal
                (outline.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> List.ofArray)
                [ "map"; "demux (idle after 00:01:00)"; "  aggregate"; "join"; "sink db" ]
                "outline"
        }
        test "a sink needs a name" {
            Expect.throwsT<ArgumentException>
                (fun () -> Pipe.source<int> |> Pipe.sink " " ignoreWrite |> ignore)
                "blank name"
        }
    ]
