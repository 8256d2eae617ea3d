// Tests for src/KFlow.Core/AppliedOffsets.fs and Pipe.sinkExactlyOnce: where a partition resumes past
// recorded offsets, and the source positions an exactly-once sink's write receives with each batch.
module KFlow.Core.Tests.AppliedOffsetsTests

open System.Threading.Tasks
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0

/// A store that records nothing (the pipe only needs to carry it).
let private store group : AppliedOffsetStore = {
    GroupId = group
    Load = fun _ -> Task.FromResult Map.empty
    Prune = fun _ -> Task.CompletedTask
}

let tests =
    testList "AppliedOffsets" [
        test "resuming moves the committed offset past the applied offsets that follow it without a gap" {
            Expect.equal (AppliedOffsets.resumeAt 5L [| 5L; 6L; 8L |]) 7L "5 and 6 applied, 7 not"
            Expect.equal (AppliedOffsets.resumeAt 5L [||]) 5L "nothing applied"

            Expect.equal
                (AppliedOffsets.resumeAt 5L [| 6L; 7L |])
                5L
                "5 is not applied: 6 and 7 are skipped when read"
        }

        testProperty "the resume offset only passes applied offsets and stops at the first one that is not"
        <| fun (committed: uint16) (offsets: uint16 list) ->
            let committed = int64 committed

            let applied =
                offsets |> List.map int64 |> List.filter (fun o -> o >= committed) |> List.sort

            let resume = AppliedOffsets.resumeAt committed (Array.ofList applied)

            resume >= committed
            && [ committed .. resume - 1L ] |> List.forall (fun o -> List.contains o applied)
            && not (List.contains resume applied)

        test "an aggregate's batch stands for the distinct positions of its inputs" {
            let envelopes = [
                for o in [ 3L; 4L ] ->
                    Envelope.ofMessage
                        {
                            Position = Position.create tp o
                            Epoch = 1
                        }
                        (Message.create tp o "k" o)
            ]

            let merged = Envelope.merge 0 (envelopes @ [ envelopes.Head ])

            Expect.equal
                (AppliedOffsets.positionsOf merged)
                [ Position.create tp 3L; Position.create tp 4L ]
                "3 and 4, once each"
        }

        test "an exactly-once sink's write receives each batch with the positions of its messages" {
            let writes = ResizeArray<Position list * string list>()

            let d =
                Pipe.source<string>
                |> Pipe.demux (fun s -> s.Substring(0, 1)) (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
                |> Pipe.sinkExactlyOnce "db" (store "g") (fun positions batch ->
                    writes.Add(positions, batch)
                    Task.CompletedTask)
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [
                    for o, v in [ 0L, "a0"; 1L, "b1"; 2L, "a2"; 3L, "b3" ] -> Message.create tp o "" v
                ]

            Expect.equal
                (List.ofSeq writes)
                [
                    [ Position.create tp 0L; Position.create tp 2L ], [ "a0"; "a2" ]
                    [ Position.create tp 1L; Position.create tp 3L ], [ "b1"; "b3" ]
                ]
                "per-key batches out of offset order, each with its own offsets"

            Expect.equal (TestDriver.committed tp d) 4L "all finished"
        }

        test "a pipe lists the stores of its exactly-once sinks, in sub-pipes too, each once" {
            let s = store "g"

            let pipe =
                Pipe.source<string>
                |> Pipe.demux id (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
                |> Pipe.sinkExactlyOnce "db" s (fun _ _ -> Task.CompletedTask)

            Expect.equal (Pipe.appliedOffsetStores pipe |> List.map _.GroupId) [ "g" ] "one store"

            let inDemux =
                Pipe.source<string>
                |> Pipe.demux id (fun sub ->
                    sub
                    |> Pipe.aggregate (Buffer.count 2)
                    |> Pipe.sinkExactlyOnce "db" s (fun _ _ -> Task.CompletedTask))

            Expect.equal (Pipe.appliedOffsetStores inDemux).Length 1 "found in the sub-pipe"
            Expect.stringContains (Pipe.describe pipe) "sink db (exactly once)" "the outline says so"

            Expect.isEmpty
                (Pipe.appliedOffsetStores (
                    Pipe.source<int> |> Pipe.sink "plain" (fun _ -> Task.CompletedTask)
                ))
                "a plain sink has none"
        }

        test "stores are found in the sub-pipes of mfd, split … join and nested demuxes" {
            let s = store "g"

            let sinkIn sub =
                sub |> Pipe.sinkExactlyOnce "db" s (fun _ _ -> Task.CompletedTask)

            let viaMfd =
                Pipe.source<string> |> Pipe.mfd (fun v -> Some(v, v)) (fun sub -> sinkIn sub)

            let viaSplit = Pipe.source<string> |> Pipe.split id |> sinkIn |> Pipe.join

            let viaSplitOpen = Pipe.source<string> |> Pipe.splitByKey |> sinkIn

            let nested =
                Pipe.source<string>
                |> Pipe.demuxByKey (fun outer -> outer |> Pipe.demux id (fun inner -> sinkIn inner))

            for name, stores in
                [
                    "mfd", Pipe.appliedOffsetStores viaMfd
                    "split … join", Pipe.appliedOffsetStores viaSplit
                    "a split left open", Pipe.appliedOffsetStores viaSplitOpen
                    "a demux in a demux", Pipe.appliedOffsetStores nested
                ] do
                Expect.equal (stores |> List.map _.GroupId) [ "g" ] name
        }

        test
            "a routeDependent route holding an exactly-once sink fails its message when built, writing nothing" {
            let writes = ResizeArray<Position list>()

            let d =
                Pipe.source<string>
                |> Pipe.routeDependent id (fun _ sub ->
                    sub
                    |> Pipe.sinkExactlyOnce "db" (store "g") (fun positions _ ->
                        writes.Add positions
                        Task.CompletedTask))
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feed (Message.create tp 0L "" "a")

            Expect.isEmpty writes "nothing written"
            Expect.equal (TestDriver.committed tp d) 0L "the message stays open"

            match TestDriver.failures d with
            | [ f ] ->
                Expect.isTrue (f.Error :? System.InvalidOperationException) "InvalidOperationException"
                Expect.stringContains f.Error.Message "exactly-once sink 'db'" "names the sink"
                Expect.stringContains f.Error.Message "after routeDependent" "says what to do"
            | other -> failtestf "expected one failure, got %A" other

            let after =
                Pipe.source<string>
                |> Pipe.routeDependent id (fun _ sub -> sub |> Pipe.map id)
                |> Pipe.sinkExactlyOnce "db" (store "g") (fun _ _ -> Task.CompletedTask)

            Expect.equal
                (Pipe.appliedOffsetStores after |> List.map _.GroupId)
                [ "g" ]
                "a sink after the route is found"

            let plain =
                after
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feed (Message.create tp 0L "" "a")

            Expect.isEmpty (TestDriver.failures plain) "and runs"
            Expect.equal (TestDriver.committed tp plain) 1L "its message is written"
        }

        test "a fenced write is recognised inside wrapping exceptions" {
            let fenced = FencedWriteException "fenced"
            Expect.isTrue (AppliedOffsets.isFenced fenced) "itself"

            Expect.isTrue
                (AppliedOffsets.isFenced (System.InvalidOperationException("outer", fenced)))
                "as an inner exception"

            Expect.isTrue
                (AppliedOffsets.isFenced (System.AggregateException [ exn "x"; fenced ]))
                "aggregated"

            Expect.isFalse (AppliedOffsets.isFenced (exn "other")) "another error"
        }

        test "an exactly-once sink needs a name and a store with a group" {
            Expect.throwsT<System.ArgumentException>
                (fun () ->
                    Pipe.source<int>
                    |> Pipe.sinkExactlyOnce "db" (store "") (fun _ _ -> Task.CompletedTask)
                    |> ignore)
                "empty group"

            Expect.throwsT<System.ArgumentException>
                (fun () ->
                    Pipe.source<int>
                    |> Pipe.sinkExactlyOnce " " (store "g") (fun _ _ -> Task.CompletedTask)
                    |> ignore)
                "blank name"
        }
    ]
