// Tests for src/KFlow.Core/Collected.fs: PipeRun reuses one collector per thread, so the effects a
// push returns must stay as they were after later pushes, and a push nested in a step gets its own.
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

let tests =
    testList "Collected" [
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
