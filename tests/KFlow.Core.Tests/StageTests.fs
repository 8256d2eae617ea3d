// Tests for src/KFlow.Core/Stage.fs: the stateless stages' token bookkeeping and a user stage,
// stepped by hand and run through the test driver for hand-checked commit points.
module KFlow.Core.Tests.StageTests

open System
open System.Threading.Tasks
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0
let private at = DateTimeOffset.UnixEpoch

let private token offset = {
    Position = Position.create tp offset
    Epoch = 1
}

let private envelope offset value =
    Envelope.ofMessage (token offset) (Message.create tp offset "k" value)

let private stepOnce stage value =
    Stage.start stage |> Stage.step at (Message(envelope 5L value)) |> snd

let private manual = {
    TestDriver.options with
        SinkMode = Manual
}

let private ignoreWrite _ = Task.CompletedTask

let tests =
    testList "Stage" [
        test "map keeps the input's token" {
            let out = stepOnce (Stage.map (fun (x: int) -> x * 2)) 21

            Expect.equal
                (out.Emitted |> List.map (fun e -> e.Value, e.Tokens))
                [ 42, [ token 5L ] ]
                "one output"

            Expect.isEmpty out.Effects "no ledger effect"
        }
        test "mapEnvelope's function sees the offset and the message" {
            let out =
                stepOnce
                    (Stage.mapEnvelope (fun (e: Envelope<string>) ->
                        sprintf "%s@%d" e.Value e.Position.Offset))
                    "v"

            Expect.equal (out.Emitted |> List.map (fun e -> e.Value)) [ "v@5" ] "sees the offset"
        }
        test "filter completes the token of a dropped value" {
            let out = stepOnce (Stage.filter (fun (x: int) -> x > 0)) -1
            Expect.isEmpty out.Emitted "nothing emitted"
            Expect.equal out.Effects [ Complete(token 5L) ] "token completed"
        }
        test "unfold to zero completes, to one keeps, to n forks the token into n parts" {
            let unfold = Stage.unfold (fun (n: int) -> List.replicate n "x")
            Expect.equal (stepOnce unfold 0).Effects [ Complete(token 5L) ] "zero"
            Expect.isEmpty (stepOnce unfold 1).Effects "one"
            let three = stepOnce unfold 3
            Expect.equal three.Effects [ Fork(token 5L, 3) ] "n"

            Expect.equal
                (three.Emitted |> List.map (fun e -> e.Tokens))
                (List.replicate 3 [ token 5L ])
                "each holds the token"
        }
        test "mapFilterKey sets the key or drops" {
            let mfd =
                Stage.mapFilterKey (fun (x: int) -> if x > 0 then Some(string (x % 2), x) else None)

            Expect.equal ((stepOnce mfd 3).Emitted |> List.map (fun e -> e.Key)) [ "1" ] "keyed"
            Expect.equal (stepOnce mfd 0).Effects [ Complete(token 5L) ] "dropped"
        }
        test "a stage needs a name" {
            Expect.throwsT<ArgumentException>
                (fun () -> Stage.create "" () (fun _ _ s -> s, Output.none<int>) |> ignore)
                "empty name"
        }
        test "filter lets the commit point pass dropped offsets" {
            let d =
                Pipe.source<int>
                |> Pipe.filter (fun x -> x % 2 = 0)
                |> Pipe.sink "db" ignoreWrite
                |> TestDriver.create manual
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 3L -> Message.create tp o "k" (int o + 1) ]
            // 0 -> 1 (dropped), 1 -> 2 (sink call 1), 2 -> 3 (dropped), 3 -> 4 (sink call 2)
            Expect.equal (TestDriver.committed tp d) 1L "0 dropped, 1 pending in the sink"
            let d = d |> TestDriver.succeed 1
            Expect.equal (TestDriver.committed tp d) 3L "1 sunk, 2 dropped, 3 pending"
            let d = d |> TestDriver.succeed 2
            Expect.equal (TestDriver.committed tp d) 4L "all done"
        }
        test "unfold to n completes the offset only when all n outputs are sunk" {
            let d =
                Pipe.source<int>
                |> Pipe.unfold (fun n -> List.init n id)
                |> Pipe.sink "db" ignoreWrite
                |> TestDriver.create manual
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ Message.create tp 0L "k" 3; Message.create tp 1L "k" 0 ]

            Expect.equal (TestDriver.pending d |> List.length) 3 "three writes"
            let d = d |> TestDriver.succeed 1 |> TestDriver.succeed 3
            Expect.equal (TestDriver.committed tp d) 0L "one part still open"
            let d = d |> TestDriver.succeed 2
            Expect.equal (TestDriver.committed tp d) 2L "offset 0 done, offset 1 unfolded to zero"
        }
        test "a user stage keeps state across messages and ticks (kflow_gen)" {
            // Emits each value with a running count; a tick emits nothing but is seen.
            let counting =
                Stage.create "count" 0 (fun _ event n ->
                    match event with
                    | Message e ->
                        n + 1, Output.emit (Envelope.map (fun (v: string) -> sprintf "%s#%d" v (n + 1)) e)
                    | _ -> n, Output.none)

            let d =
                Pipe.source<string>
                |> Pipe.via counting
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feed (Message.create tp 0L "k" "a")
                |> TestDriver.advance (TimeSpan.FromSeconds 1.0)
                |> TestDriver.feed (Message.create tp 1L "k" "b")

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Value))
                [ "a#1"; "b#2" ]
                "running count"

            Expect.equal (TestDriver.committed tp d) 2L "outputs at the pipe's end are finished"
        }
    ]
