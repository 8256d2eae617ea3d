// Tests for src/KFlow.Kafka/SinkLanes.fs: writes of one lane (demux substream) run one at a time in
// request order (up to InFlight for a pipelined sink), lanes run side by side, a failed write stops its lane.
module KFlow.Kafka.Tests.SinkLanesTests

open System.Collections.Generic
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka

let private tp = TopicPartition.create "t" 0

/// A write request of `lane` for a sink with `pipelining`, whose write records its name in `started`
/// and returns `result`.
let private requestWith
    (pipelining: SinkPipelining)
    (started: List<string>)
    (lane: string)
    (name: string)
    (result: Task)
    : SinkRequest =
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
        Pipelining = pipelining
    }

/// A write request of an ordinary sink (one write at a time per lane).
let private request started lane name result =
    requestWith SinkPipelining.sequential started lane name result

/// A pipelined sink's settings allowing `inFlight` writes per lane, recording reservations and
/// releases as "reserve a" / "release a"; `ready name` is the reservation's task.
let private pipelined (inFlight: int) (events: List<string>) (ready: string -> Task) =
    SinkPipelining.create
        inFlight
        (fun v ->
            events.Add $"reserve {v}"
            ready (string v))
        (fun v -> events.Add $"release {v}")

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
            // The loop hands a's end (SinkDone) to the lanes, which settle it and continue the lane.
            first.SetResult()
            l.Ended(pending[0], None)
            Expect.equal (List.ofSeq started) [ "a"; "b"; "c" ] "b and c ran in order once a ended"
            Expect.equal (List.ofSeq ended) [ "a"; "b"; "c" ] "a settled by Ended, b and c inline"
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
            let l, ended, pending = lanes ()
            let blocker = TaskCompletionSource()
            l.Enqueue(request started "k" "a" blocker.Task)
            l.Enqueue(request started "k" "b" (Task.FromException(exn "down")))
            l.Enqueue(request started "k" "c" Task.CompletedTask)
            blocker.SetResult()
            l.Ended(pending[0], None)
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "c is not started after b failed"
            Expect.equal (List.ofSeq ended) [ "a"; "b" ] "b's failure was reported"
            l.Enqueue(request started "k" "d" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "nothing starts in the stopped lane"
        }

        test
            "a pipelined sink's lane starts up to InFlight writes at once, in request order, each reserved first" {
            let started = List<string>()
            let events = List<string>()
            let l, ended, pending = lanes ()
            let p = pipelined 2 events (fun _ -> Task.CompletedTask)
            let a, b = TaskCompletionSource(), TaskCompletionSource()
            l.Enqueue(requestWith p started "k" "a" a.Task)
            l.Enqueue(requestWith p started "k" "b" b.Task)
            l.Enqueue(requestWith p started "k" "c" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "a and b run together; c waits for room"
            Expect.equal (List.ofSeq events) [ "reserve a"; "reserve b" ] "reserved in request order"
            Expect.equal (l.Running "k") 2 "two writes in flight"
            // b ends before a: settled at once, and c takes its place.
            b.SetResult()
            l.Ended(pending[1], None)
            Expect.equal (List.ofSeq ended) [ "b"; "c" ] "b settled before a; c ran inline"
            Expect.equal (List.ofSeq started) [ "a"; "b"; "c" ] "c started once b ended"

            Expect.equal
                (List.ofSeq events)
                [ "reserve a"; "reserve b"; "release b"; "reserve c"; "release c" ]
                "each released when it ended"

            a.SetResult()
            l.Ended(pending[0], None)
            Expect.equal (List.ofSeq ended) [ "b"; "c"; "a" ] "a settled last"
            Expect.equal (l.Running "k") 0 "the lane is idle"
        }

        test "a pipelined write starts only once its reservation is ready, and counts as in flight meanwhile" {
            let started = List<string>()
            let events = List<string>()
            let l, _, pending = lanes ()
            let gate = TaskCompletionSource()

            let p =
                pipelined 4 events (fun v -> if v = "b" then gate.Task else Task.CompletedTask)

            l.Enqueue(requestWith p started "k" "a" (TaskCompletionSource().Task))
            l.Enqueue(requestWith p started "k" "b" (TaskCompletionSource().Task))

            Expect.equal
                (List.ofSeq started)
                [ "a" ]
                "b waits for its reservation (an earlier batch of its keys)"

            Expect.equal pending.Count 2 "both are in flight"
            gate.SetResult()
            Expect.equal (List.ofSeq started) [ "a"; "b" ] "b's write started once its reservation was ready"
        }

        test
            "a failed pipelined write stops its lane: the writes in flight finish, none starts, each is released" {
            let started = List<string>()
            let events = List<string>()
            let l, ended, pending = lanes ()
            let p = pipelined 3 events (fun _ -> Task.CompletedTask)
            let a, b, c = TaskCompletionSource(), TaskCompletionSource(), TaskCompletionSource()
            l.Enqueue(requestWith p started "k" "a" a.Task)
            l.Enqueue(requestWith p started "k" "b" b.Task)
            l.Enqueue(requestWith p started "k" "c" c.Task)
            l.Enqueue(requestWith p started "k" "d" Task.CompletedTask)
            a.SetException(exn "down")
            l.Ended(pending[0], Some(exn "down"))
            b.SetResult()
            l.Ended(pending[1], None)
            c.SetResult()
            l.Ended(pending[2], None)
            Expect.equal (List.ofSeq started) [ "a"; "b"; "c" ] "d never started"
            Expect.equal (List.ofSeq ended) [ "a"; "b"; "c" ] "a's failure reported; b and c finished"

            Expect.equal
                (List.ofSeq events)
                [ "reserve a"; "reserve b"; "reserve c"; "release a"; "release b"; "release c" ]
                "the failed write was released too (the runtime will not write it again)"
        }

        test "writes of an ordinary sink are never reserved or released" {
            let started = List<string>()
            let events = List<string>()
            let l, _, _ = lanes ()

            let p = {
                pipelined 2 events (fun _ -> Task.CompletedTask) with
                    InFlight = 1
            }

            l.Enqueue(requestWith p started "k" "a" Task.CompletedTask)
            Expect.equal (List.ofSeq started) [ "a" ] "a ran"
            Expect.isEmpty events "one write at a time needs no reservation"
        }
    ]
