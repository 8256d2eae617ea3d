// Tests for src/KFlow.Testing/PipeProperties.fs: the ready-made crash/replay property passes on
// correct pipes and catches broken ones (early completion, data dropped on a rebalance, reordering).
module KFlow.Testing.Tests.PipePropertiesTests

open System
open System.Collections.Generic
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open KFlow
open KFlow.Testing

let private anywhere = TopicPartition.create "t" 0

/// Messages with keys a..e and values 0..99 (positions are set by the property).
let private inputs: Gen<Message<int> list> =
    Gen.listOf (
        Gen.map2
            (fun k v -> Message.create anywhere 0L k v)
            (Gen.elements [ "a"; "b"; "c"; "d"; "e" ])
            (Gen.choose (0, 99))
    )

let private write (_: 'a) = Task.CompletedTask

/// Runs a property for 200 cases; the exception FsCheck throws on a counterexample, if any.
let private counterexample (property: Property) =
    try
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(200).WithQuietOnSuccess(true), property)
        None
    with ex ->
        Some ex.Message

let private passes name (property: Property) =
    match counterexample property with
    | None -> ()
    | Some message -> failtestf "%s: the property failed on a correct pipe:\n%s" name message

let private caught (expected: string) (property: Property) =
    match counterexample property with
    | None -> failtest "the property passed on a broken pipe"
    | Some message -> Expect.stringContains message expected "the counterexample says what went wrong"

/// A user stage that completes its inputs' tokens itself, before the sink has written them.
let private eager =
    Stage.create "eager" () (fun _ event () ->
        match event with
        | Message e ->
            (),
            {
                Emitted = [ e ]
                Effects = e.Tokens |> List.map Complete
            }
        | _ -> (), Output.none)

/// A user stage that holds one value and, on a rebalance, drops it instead of passing it on.
let private dropsOnRevoke =
    Stage.create "drops on revoke" None (fun _ event (held: Envelope<int> option) ->
        match event, held with
        | Message e, None -> Some e, Output.none
        | Message e, Some h -> Some e, Output.emit h
        | (Tick | Flush), Some h -> None, Output.emit h
        | Revoked _, Some h -> None, Output.drop h
        | _ -> held, Output.none)

/// A user stage that swaps each pair of values (and so reorders a key's messages).
let private swapsPairs =
    Stage.create "swaps pairs" None (fun _ event (held: Envelope<int> option) ->
        match event, held with
        | Message e, None -> Some e, Output.none
        | Message e, Some h -> None, Output.emitAll [ e; h ]
        | (Tick | Flush | Revoked _), Some h -> None, Output.emit h
        | _ -> held, Output.none)

/// A user stage that keeps every value and its token forever.
let private swallows =
    Stage.create "swallows" () (fun _ _ () -> (), (Output.none: Output<int>))

let tests =
    testList "PipeProperties" [
        test "passes on a pipe with filter, unfold, demux by key and aggregates" {
            Pipe.source<int>
            |> Pipe.filter (fun v -> v % 5 <> 0)
            |> Pipe.unfold (fun v -> List.replicate (v % 3) v)
            |> Pipe.mapEnvelope (fun e -> e.Key, e.Value)
            |> Pipe.demux fst (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> passes "demux + aggregate"
        }
        test "passes on a pipe demuxed by the Kafka key with demuxByKey" {
            Pipe.source<int>
            |> Pipe.unfold (fun v -> List.replicate (v % 3) v)
            |> Pipe.demuxByKey (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> passes "demuxByKey"
        }
        test "passes on a pipe whose shutdown flush must wait for async calls in flight" {
            Pipe.source<int>
            |> Pipe.aggregate (Buffer.count 3)
            |> Pipe.mapAsync 2 (fun batch -> Task.FromResult(List.sum batch))
            |> Pipe.aggregate (Buffer.count 2)
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> passes "flush behind async calls"
        }
        test "catches a demux by value, which reorders a key's messages" {
            Pipe.source<int>
            |> Pipe.unfold (fun v -> List.replicate (v % 3) v)
            |> Pipe.demux string (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> caught "out of order"
        }
        test "passes on a pipe with async maps answered in any order" {
            Pipe.source<int>
            |> Pipe.mapAsync 2 (fun v -> Task.FromResult(v + 1))
            |> Pipe.mapEnvelope (fun e -> e.Key, e.Value)
            |> Pipe.demux fst (fun sub ->
                sub |> Pipe.mapAsync 1 Task.FromResult |> Pipe.aggregate (Buffer.count 2))
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> passes "deferred async maps"
        }
        test "passes on a pipe with an age buffer and on a pipe without a sink" {
            Pipe.source<int>
            |> Pipe.aggregate (Buffer.age (TimeSpan.FromSeconds 3.0))
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> passes "age buffer"

            Pipe.source<int>
            |> Pipe.map (fun v -> v * 2)
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> passes "no sink"
        }
        test "catches a stage that completes tokens before the sink has written them" {
            Pipe.source<int>
            |> Pipe.via eager
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> caught "whose processing is unfinished"
        }
        test "catches a stage that drops the data it holds on a rebalance" {
            Pipe.source<int>
            |> Pipe.via dropsOnRevoke
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> caught "whose processing is unfinished"
        }
        test "catches a stage that keeps tokens forever" {
            Pipe.source<int>
            |> Pipe.via swallows
            |> Pipe.sink "db" write
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> caught "a stage keeps or never finishes offset"
        }
        test "reports a sink whose write throws" {
            Pipe.source<int>
            |> Pipe.sink "db" (fun v ->
                if v > 90 then
                    failwith "value too large"
                else
                    Task.CompletedTask)
            |> fun pipe -> PipeProperties.crashReplay pipe inputs
            |> caught "sink db threw on the write of"
        }
        test "catches a stage that reorders a key, unless key order is switched off" {
            let pipe = Pipe.source<int> |> Pipe.via swapsPairs |> Pipe.sink "db" write
            PipeProperties.crashReplay pipe inputs |> caught "out of order"

            PipeProperties.crashReplayWith
                {
                    PipeProperties.options with
                        CheckKeyOrder = false
                }
                pipe
                inputs
            |> passes "order not checked"
        }
        test "keeps the generator's positions when Partitions is None, and refuses decreasing offsets" {
            let tp = TopicPartition.create "orders" 2

            let placed =
                Gen.constant [ for o in [ 3L; 5L; 9L ] -> Message.create tp o "k" (int o) ]

            let pipe = Pipe.source<int> |> Pipe.sink "db" write

            let options = {
                PipeProperties.options with
                    Partitions = None
            }

            PipeProperties.crashReplayWith options pipe placed
            |> passes "generator positions"

            let backwards =
                Gen.constant [ Message.create tp 5L "k" 5; Message.create tp 3L "k" 3 ]

            match counterexample (PipeProperties.crashReplayWith options pipe backwards) with
            | Some message -> Expect.stringContains message "offsets must increase" "says what to fix"
            | None -> failtest "decreasing offsets were accepted"
        }
        test "the C# face takes read-only lists and options built with With methods" {
            let pipe = Pipe.source<int> |> Pipe.via eager |> Pipe.sink "db" write
            let lists = inputs |> Gen.map (fun ms -> ms :> IReadOnlyList<Message<int>>)

            PipeProperties.CrashReplay(pipe, lists, CrashReplayOptions.Default.WithCrashProbability(0.2))
            |> caught "whose processing is unfinished"

            PipeProperties.CrashReplay(Pipe.source<int> |> Pipe.sink "db" write, lists)
            |> passes "C# face"
        }
    ]
