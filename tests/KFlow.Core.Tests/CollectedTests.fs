// Tests for src/KFlow.Core/Collected.fs: PipeRun reuses one collector per thread, so the effects a
// push returns must stay as they were after later pushes, and a push nested in a step gets its own;
// an owned run's collector writes in place and records nothing.
module KFlow.Core.Tests.CollectedTests

open System
open System.Threading.Tasks
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0
let private at = DateTimeOffset.UnixEpoch

let private message offset (value: int) =
    let m = Message.create tp offset (string value) value
    Message(Envelope.box (Envelope.ofMessage { Position = m.Position; Epoch = 1 } m))

/// The values of a push's sink requests, in order.
let private written (effects: Effects) =
    effects.Sinks |> List.map (fun s -> unbox<int> s.Envelope.Value)

let private toSink (pipe: Pipe<int, int>) =
    pipe |> Pipe.sink "out" (fun (_: int) -> Task.CompletedTask) |> PipeRun.start

/// A level of one stage (state 0) and one async node (idle), and a demux's state, to write through a
/// collector.
let private store () =
    let level =
        Level([||], [| StageState(StageCell 0); RunState.idleAsync |], [], null, DateTimeOffset.MinValue)

    let demuxed = Demuxed(Collections.Generic.Dictionary<string, Level>())
    level, demuxed

/// Writes every kind of store write through a collector (owned or not); returns whether each was
/// made, and the changes it recorded, as a count.
let private writeAll owned =
    let level, demuxed = store ()
    let calls = Collections.Generic.Dictionary<int, Location>()
    let acc = Collected.Take(Defer, calls, 1, 1, owned)

    try
        let cell =
            match level.States[0] with
            | StageState c -> c
            | _ -> failwith "a stage state"

        let sub = Level([||], [||], [ struct (0, "k") ], level, DateTimeOffset.MinValue)

        let queued =
            AsyncState(AsyncQueue.enqueue (Queued Unchecked.defaultof<Envelope<obj>>) AsyncQueue.empty)

        acc.SetState(cell, (1 :> obj))
        acc.Set(level.States, 1, queued)
        acc.Set(level.States, 1, RunState.idleAsync)

        acc.SetHeld(
            demuxed,
            [
                {
                    Hold = 1
                    Event = Flush
                    Waiting = Set.empty
                }
            ]
        )

        acc.AddSubstream(demuxed, "k", sub)
        acc.SetActive(sub, at)
        let location = { Level = level; Node = 1 }
        acc.Call(7, location)
        acc.SetWithCall(acc.LastCall, location, queued)
        let written = calls.ContainsKey 7 && obj.ReferenceEquals(level.States[1], queued)
        let ended = acc.EndCall(7, location)
        acc.SetWithCall(ended, location, RunState.idleAsync)
        acc.DropSubstream(demuxed, "k", sub)

        let mutable recorded = 0
        let mutable change = acc.Changes

        while not (isNull change) do
            recorded <- recorded + 1
            change <- change.Next

        let made = [
            unbox<int> cell.State = 1
            written
            not (calls.ContainsKey 7)
            obj.ReferenceEquals(level.States[1], RunState.idleAsync)
            demuxed.Held.Length = 1
            demuxed.Subs.Count = 0
            sub.LastActive = at
        ]

        made, recorded
    finally
        acc.Release()

let tests =
    testList "Collected" [
        test "an owned collector writes the store in place and records no change" {
            let made, recorded = writeAll true
            Expect.allEqual made true "every write made"
            Expect.equal recorded 0 "no change recorded"
        }
        test "a value collector makes the same writes and records each" {
            let made, recorded = writeAll false
            Expect.allEqual made true "every write made"
            // State, slot (twice), held, substream added, activity, call started (its state write
            // attached), call ended (likewise), substream dropped.
            Expect.equal recorded 9 "one change per write, a call's state write riding on its change"
        }
        test "the effects a push returned stay unchanged by later pushes" {
            let run0 = Pipe.source<int> |> Pipe.map ((+) 1) |> toSink
            let run1, first = PipeRun.push at (message 0L 1) run0
            let run2, second = PipeRun.push at (message 1L 2) run1
            let _, third = PipeRun.push at (message 2L 3) run2

            Expect.equal (written first) [ 2 ] "the first push wrote its own value only"
            Expect.equal (written second) [ 3 ] "the second push wrote its own value only"
            Expect.equal (written third) [ 4 ] "the third push wrote its own value only"
        }

        test "a push inside a stage's step on the same thread leaves the outer push's effects whole" {
            let inner = Pipe.source<int> |> Pipe.map (fun v -> v * 100) |> toSink
            let mutable innerEffects = None

            // A stage that, against the rules, pushes another pipe while it steps (same thread).
            let nesting =
                Stage.create "nesting" () (fun _ event () ->
                    match event with
                    | Message e ->
                        let _, effects = PipeRun.push at (message 7L e.Value) inner
                        innerEffects <- Some effects
                        (), Output.emit e
                    | _ -> (), Output.none)

            // The unfold's fork and its first part's write are collected before the second part's
            // nested push.
            let outer =
                Pipe.source<int>
                |> Pipe.unfold (fun v -> [ v; v + 10 ])
                |> Pipe.via nesting
                |> Pipe.map ((+) 1)
                |> toSink

            let _, effects = PipeRun.push at (message 0L 5) outer

            Expect.equal (written effects) [ 6; 16 ] "the outer push wrote both parts, in order"
            Expect.equal effects.Ledger.Length 1 "the outer push kept the unfold's fork"
            Expect.isEmpty effects.Failures "nothing failed"

            match innerEffects with
            | Some inner -> Expect.equal (written inner) [ 1500 ] "the last inner push wrote its own value"
            | None -> failtest "the stage did not step"
        }
    ]
