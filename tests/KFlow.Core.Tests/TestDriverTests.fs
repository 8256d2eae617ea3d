// Tests for src/KFlow.Core/TestDriver.fs: assignments and epochs, manual sink answers, stale
// completions, crashes and replay, throwing stages, uncommitted work lost in a crash.
module KFlow.Core.Tests.TestDriverTests

open System
open System.Threading.Tasks
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0
let private tp1 = TopicPartition.create "t" 1

let private manual = {
    TestDriver.options with
        SinkMode = Manual
}

let private messages (tp: TopicPartition) offsets = [ for o in offsets -> Message.create tp o "k" (int o) ]

let private direct () =
    Pipe.source<int> |> Pipe.sink "db" (fun (_: int) -> Task.CompletedTask)

/// The direct pipe with Manual sinks, tp assigned and these offsets of it fed.
let private fedManually offsets =
    direct ()
    |> TestDriver.create manual
    |> TestDriver.assign tp
    |> TestDriver.feedAll (messages tp offsets)

let tests =
    testList "TestDriver" [
        test "offsets may have gaps; the commit point is one past the last delivered" {
            let d =
                direct ()
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll (messages tp [ 3L; 7L; 20L ])

            Expect.equal (TestDriver.committed tp d) 21L "one past 20"
        }
        test "feeding an unassigned partition or a lower offset is refused with a sentence" {
            let d = direct () |> TestDriver.start

            Expect.throwsC (fun () -> d |> TestDriver.feed (Message.create tp 0L "k" 0) |> ignore) (fun e ->
                Expect.stringContains e.Message "TestDriver.assign" "says what to do")

            let d = d |> TestDriver.assign tp |> TestDriver.feed (Message.create tp 5L "k" 5)

            Expect.throwsT<ArgumentException>
                (fun () -> d |> TestDriver.feed (Message.create tp 5L "k" 5) |> ignore)
                "same offset"
        }
        test "stale completions after a revoke are refused, and the stored commit point does not move" {
            let d = fedManually [ 0L; 1L ] |> TestDriver.succeed 1 |> TestDriver.revoke tp

            Expect.equal (TestDriver.committed tp d) 1L "offset 1 was in flight"
            let d = d |> TestDriver.succeed 2
            Expect.equal (TestDriver.committed tp d) 1L "unchanged"

            match TestDriver.refused d with
            | [ NotAssigned p ] -> Expect.equal p tp "refused as not assigned"
            | other -> failtestf "expected one NotAssigned refusal, got %A" other

            Expect.equal
                (TestDriver.sinkCalls d |> List.map (fun c -> c.Status))
                [ Succeeded; Succeeded ]
                "both written"
        }
        test "a re-assigned partition restarts from its commit point under a new epoch" {
            let d =
                fedManually [ 0L; 1L ]
                |> TestDriver.succeed 1
                |> TestDriver.revoke tp
                |> TestDriver.assign tp
                |> TestDriver.replay

            Expect.equal
                (TestDriver.pending d |> List.map (fun c -> unbox<int> c.Value))
                [ 1; 1 ]
                "offset 1 again (old call still pending)"

            let d = d |> TestDriver.succeed 2

            match TestDriver.refused d with
            | [ StaleEpoch _ ] -> ()
            | other -> failtestf "expected a StaleEpoch refusal, got %A" other

            Expect.equal (TestDriver.committed tp d) 1L "the old epoch's completion does not count"
            let d = d |> TestDriver.succeed 3
            Expect.equal (TestDriver.committed tp d) 2L "the new one does"
        }
        test "a failed write completes nothing; a crash and replay writes it again" {
            let d =
                fedManually [ 0L; 1L ] |> TestDriver.fail 1 "db down" |> TestDriver.succeed 2

            Expect.equal (TestDriver.committed tp d) 0L "offset 0 is open"
            let d = d |> TestDriver.crash |> TestDriver.replay |> TestDriver.succeedAll
            Expect.equal (TestDriver.written "db" d: int list) [ 1; 0; 1 ] "0 and 1 written again"
            Expect.equal (TestDriver.committed tp d) 2L "done"
        }
        test "a crash abandons pending writes" {
            let d = fedManually [ 0L ]

            let d = d |> TestDriver.crash
            Expect.equal (TestDriver.sinkCalls d |> List.map (fun c -> c.Status)) [ Abandoned ] "abandoned"

            Expect.throwsT<ArgumentException>
                (fun () -> d |> TestDriver.succeed 1 |> ignore)
                "cannot be answered"
        }
        test "a write that throws is Failed" {
            let d =
                Pipe.source<int>
                |> Pipe.sink "db" (fun (_: int) -> Task.FromException(exn "boom"))
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feed (Message.create tp 0L "k" 0)

            Expect.equal (TestDriver.sinkCalls d |> List.map (fun c -> c.Status)) [ Failed "boom" ] "failed"
            Expect.equal (TestDriver.committed tp d) 0L "open"
        }
        test "a stage that throws is reported and its offset stays open; later offsets still flow" {
            let d =
                Pipe.source<int>
                |> Pipe.map (fun x -> if x = 1 then failwith "bad input" else x)
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll (messages tp [ 0L .. 2L ])

            Expect.equal
                (TestDriver.failures d |> List.map (fun f -> f.Stage, f.Position))
                [ "map", ValueSome(Position.create tp 1L) ]
                "reported"

            Expect.equal (TestDriver.outputs d |> List.map (fun e -> e.Value)) [ 0; 2 ] "others flow"
            Expect.equal (TestDriver.committed tp d) 1L "stops before the failed offset"
        }
        test "without auto-commit a crash loses finished-but-uncommitted work, which is processed again" {
            let d =
                direct ()
                |> TestDriver.create {
                    TestDriver.options with
                        AutoCommit = false
                }
                |> TestDriver.assign tp
                |> TestDriver.feedAll (messages tp [ 0L; 1L ])
                |> TestDriver.commit
                |> TestDriver.feed (Message.create tp 2L "k" 2)

            Expect.equal (TestDriver.committed tp d) 2L "committed before offset 2"
            let d = d |> TestDriver.crash |> TestDriver.replay |> TestDriver.commit

            Expect.equal
                (TestDriver.written "db" d: int list)
                [ 0; 1; 2; 2 ]
                "2 written twice (at least once)"

            Expect.equal (TestDriver.committed tp d) 3L "done"
        }
        test "partitions are independent; commit history records each change with its epoch" {
            let d =
                direct ()
                |> TestDriver.create manual
                |> TestDriver.assign tp
                |> TestDriver.assign tp1
                |> TestDriver.feedAll [ Message.create tp 0L "k" 0; Message.create tp1 5L "k" 5 ]
                |> TestDriver.succeed 2

            Expect.equal (TestDriver.commitPoints d) (Map [ tp, 0L; tp1, 6L ]) "tp1 moved, tp not"
            let history = TestDriver.commitHistory d

            Expect.equal
                (history |> List.map (fun c -> c.TopicPartition, c.Offset))
                [ tp, 0L; tp1, 0L; tp1, 5L; tp1, 6L ]
                "history"

            Expect.equal (TestDriver.assigned d) [ tp; tp1 ] "assigned"
        }
        test "the clock only moves forward" {
            let d =
                direct () |> TestDriver.start |> TestDriver.advance (TimeSpan.FromMinutes 1.0)

            Expect.equal (TestDriver.now d) (DateTimeOffset.UnixEpoch + TimeSpan.FromMinutes 1.0) "advanced"

            Expect.throwsT<ArgumentException>
                (fun () -> d |> TestDriver.advance (TimeSpan.FromSeconds -1.0) |> ignore)
                "backwards"
        }
    ]
