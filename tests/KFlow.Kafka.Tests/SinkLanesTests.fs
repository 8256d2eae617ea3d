// Tests for src/KFlow.Kafka/SinkLanes.fs: writes of one lane (demux substream) run one at a time in
// request order, lanes run side by side, and a failed write stops its lane.
module KFlow.Kafka.Tests.SinkLanesTests

open System.Collections.Generic
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka

let private tp = TopicPartition.create "t" 0

/// A write request of `lane` whose write records its name in `started` and returns `result`.
let private request (started: List<string>) (lane: string) (name: string) (result: Task) : SinkRequest =
    let position = { TopicPartition = tp; Offset = 0L }

    {
        Sink = "s"
        Envelope = {
            Value = (name :> obj)
            Tokens = []
            Key = lane
            Position = position
            Timestamp = System.DateTimeOffset.UnixEpoch
        }
        Write =
            fun _ ->
                started.Add name
                result
        Substream = lane
    }

/// Lanes whose ended writes are recorded (and succeed unless their task faulted) and whose pending
/// writes are collected.
let private lanes () =
    let ended = List<string>()
    let pending = List<SinkRequest>()

    let l =
        SinkLanes(
            (fun r error ->
                ended.Add(string r.Envelope.Value)
                error.IsNone),
            (fun r _ -> pending.Add r)
        )

    l, ended, pending

let tests =
    testList "SinkLanes" [
        test "writes of one lane run in request order, each after the one before it ended" {
            let started = List<string>()
            let l, ended, pending = lanes ()
            let first = TaskCompletionSource()
            l.Enqueue(request started "k" "a" first.Task)
            l.Enqueue(request started "k" "b" Task.CompletedTask)
            l.Enqueue(request started "k" "c" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a" ] "b waits while a runs"
            Expect.equal pending.Count 1 "a runs on"
            // The loop settles a (SinkDone), then continues the lane.
            first.SetResult()
            l.Continue "k"
            Expect.equal (List.ofSeq started) [ "a"; "b"; "c" ] "b and c ran in order once a ended"
            Expect.equal (List.ofSeq ended) [ "b"; "c" ] "b and c ended inline (a is settled by the loop)"
        }

        test "writes of different lanes run side by side" {
            let started = List<string>()
            let l, _, pending = lanes ()
            l.Enqueue(request started "k1" "a" (TaskCompletionSource().Task))
            l.Enqueue(request started "k2" "b" (TaskCompletionSource().Task))
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "b does not wait for a"
            Expect.equal pending.Count 2 "both run on"
        }

        test "a write that fails at once stops its lane; the writes behind it wait" {
            let started = List<string>()
            let l, ended, _ = lanes ()
            let blocker = TaskCompletionSource()
            l.Enqueue(request started "k" "a" blocker.Task)
            l.Enqueue(request started "k" "b" (Task.FromException(exn "down")))
            l.Enqueue(request started "k" "c" Task.CompletedTask)
            blocker.SetResult()
            l.Continue "k"
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "c is not started after b failed"
            Expect.equal (List.ofSeq ended) [ "b" ] "b's failure was reported"
        }
    ]
