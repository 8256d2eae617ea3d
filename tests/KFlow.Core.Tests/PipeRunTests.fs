// Tests for src/KFlow.Core/PipeRun.fs: the interpreter is persistent (old runs stay valid, which the
// driver and properties rely on), delivers broadcast events in pipe order, and its owned mode (the
// Kafka runtime's) gives what the value API gives.
module KFlow.Core.Tests.PipeRunTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open KFlow
open KFlow.Core.Tests

let private tp = TopicPartition.create "t" 0
let private at = DateTimeOffset.UnixEpoch

let private message offset (value: 'a) =
    let m = Message.create tp offset (string value) value
    Message(Envelope.box (Envelope.ofMessage { Position = m.Position; Epoch = 1 } m))

let private values (effects: Effects) =
    effects.Outputs |> List.map (fun e -> unbox<int list> e.Value)

let private deferred = {
    TestDriver.options with
        AsyncMode = Defer
}

/// mapAsync (parallelism p), a buffer of n and a sink "db", driven with deferred calls, tp assigned.
let private deferredBatches parallelism n =
    Pipe.source<int>
    |> Pipe.mapAsync parallelism Threading.Tasks.Task.FromResult
    |> Pipe.aggregate (Buffer.count n)
    |> Pipe.sink "db" (fun (_: int list) -> Threading.Tasks.Task.CompletedTask)
    |> TestDriver.create deferred
    |> TestDriver.assign tp

/// mapAsync (parallelism 2) then a buffer of 10: what the buffer emits shows which events reached it.
let private asyncThenBuffer () =
    Pipe.source<int>
    |> Pipe.mapAsync 2 Threading.Tasks.Task.FromResult
    |> Pipe.aggregate (Buffer.count 10)
    |> PipeRun.startWith Defer

let private messageOn (tp: TopicPartition) offset (value: int) =
    let m = Message.create tp offset "k" value
    Message(Envelope.box (Envelope.ofMessage { Position = m.Position; Epoch = 1 } m))

let private noEffects = {
    Outputs = []
    Ledger = []
    Sinks = []
    Calls = []
    Failures = []
}

/// Batches of 3 of offsets 0 to 8, then a map that throws on the batch holding 4 (offsets 3 to 5).
let private failingBatch () =
    Pipe.source<int>
    |> Pipe.aggregate (Buffer.count 3)
    |> Pipe.map (fun (batch: int list) -> if List.contains 4 batch then failwith "poison" else batch)
    |> TestDriver.start
    |> TestDriver.assign tp
    |> TestDriver.feedAll [ for o in 0L .. 8L -> Message.create tp o "k" (int o) ]

let private step event (run, _) = run |> PipeRun.push at event

let private answer id (run, _) =
    run |> PipeRun.resume at id (Ok(1 :> obj))


// ---- the owned mode: the same effects as the value API, pushed in place ----

/// One step fed to an owned run and a value run alike.
type private RunCommand =
    /// Pushes the next generated input (nothing once they are all pushed).
    | PushNext
    /// Moves the clock on by this many seconds, then pushes a Tick.
    | TickAfter of seconds: int
    | PushFlush
    | PushRevoked of partition: int
    | PushAssigned of partition: int
    /// Answers the deferred call in flight at this index (modulo their count) with its result.
    | Answer of pick: int
    /// Answers the deferred call in flight at this index with an error.
    | FailCall of pick: int

/// A generated pipe, its inputs, whether async maps are deferred, and the commands.
type private OwnedCase = {
    Pipe: PipeSpec.PipeSpec
    Partitions: int
    Inputs: PipeSpec.Input list
    Deferred: bool
    Commands: RunCommand list
}

let private genOwnedCase =
    Gen.sized (fun size -> gen {
        let! pipe = PipeGen.genPipe
        let! partitions = Gen.choose (1, 3)
        let! inputs = PipeGen.genInputs partitions
        let! deferred = Gen.frequency [ 3, Gen.constant true; 1, Gen.constant false ]
        let p = Gen.choose (0, partitions - 1)
        let pick = Gen.choose (0, 5)

        let command =
            Gen.frequency [
                10, Gen.constant PushNext
                3, Gen.choose (0, 4) |> Gen.map TickAfter
                1, Gen.constant PushFlush
                1, Gen.map PushRevoked p
                1, Gen.map PushAssigned p
                6, Gen.map Answer pick
                1, Gen.map FailCall pick
            ]

        let! length = Gen.choose (0, 3 * size)
        let! commands = Gen.listOfLength length command

        return {
            Pipe = pipe
            Partitions = partitions
            Inputs = inputs
            Deferred = deferred
            Commands = commands
        }
    })

let private shrinkOwnedCase (c: OwnedCase) = seq {
    for commands in PipeGen.shrinkList c.Commands -> { c with Commands = commands }
    for inputs in PipeGen.shrinkList c.Inputs -> { c with Inputs = inputs }
}

/// What a push or resume produced, as text: every field but the functions (sink writes, calls),
/// exceptions by message.
let private shown (effects: Effects) =
    sprintf
        "%A"
        (effects.Outputs,
         effects.Ledger,
         effects.Sinks
         |> List.map (fun s -> s.Sink, s.Envelope, s.Substream, s.Pipelining.InFlight),
         effects.Calls |> List.map (fun c -> c.Id, c.Stage, c.Envelope),
         effects.Failures
         |> List.map (fun f -> f.Stage, f.Position, f.Tokens, f.Error.Message))

/// Feeds a case to a value run and an owned run of the same pipe; the differences, step by step
/// (effects, live substreams, held events), and the number of calls answered.
let private ownedAgainstValue (c: OwnedCase) =
    let mode = if c.Deferred then Defer else RunInline
    let owned = PipeRun.startOwnedWith mode (PipeSpec.build c.Pipe)
    let mutable value = PipeRun.startWith mode (PipeSpec.build c.Pipe)
    let mutable now = at
    let mutable inputs = c.Inputs
    // The calls in flight, oldest first (the value run's; the owned run's must be the same).
    let mutable inFlight: AsyncRequest list = []
    let mutable answered = 0
    let differences = ResizeArray<string>()

    let both (toValue: PipeRun -> PipeRun * Effects) (toOwned: PipeRun -> Effects) =
        let value', fromValue = toValue value
        value <- value'
        let fromOwned = toOwned owned
        struct (fromValue, fromOwned)

    let push event =
        both (PipeRun.push now event) (PipeRun.pushOwned now event)

    let answer pick (result: AsyncRequest -> Result<obj, exn>) =
        match inFlight with
        | [] -> ValueNone
        | calls ->
            let call = calls[pick % calls.Length]
            inFlight <- calls |> List.filter (fun other -> other.Id <> call.Id)
            answered <- answered + 1
            let r = result call
            ValueSome(both (PipeRun.resume now call.Id r) (PipeRun.resumeOwned now call.Id r))

    for i, command in List.indexed c.Commands do
        let step =
            match command with
            | PushNext ->
                match inputs with
                | [] -> ValueNone
                | input :: rest ->
                    inputs <- rest
                    let m = PipeScenario.messageOf input
                    let env = Envelope.box (Envelope.ofMessage { Position = m.Position; Epoch = 1 } m)

                    // By envelope for the owned run, as the Kafka runtime pushes its messages.
                    ValueSome(both (PipeRun.push now (Message env)) (PipeRun.pushMessageOwned now env))
            | TickAfter seconds ->
                now <- now.AddSeconds(float seconds)
                ValueSome(push Tick)
            | PushFlush -> ValueSome(push Flush)
            | PushRevoked p -> ValueSome(push (Revoked(PipeSpec.tpOf p)))
            | PushAssigned p -> ValueSome(push (Assigned(PipeSpec.tpOf p)))
            | Answer pick -> answer pick (fun call -> Ok((call.Run call.Envelope.Value).Result))
            | FailCall pick -> answer pick (fun call -> Error(exn $"call {call.Id} failed"))

        match step with
        | ValueNone -> ()
        | ValueSome(struct (fromValue, fromOwned)) ->
            inFlight <- inFlight @ fromValue.Calls

            if shown fromOwned <> shown fromValue then
                differences.Add(
                    sprintf
                        "step %d (%A): the owned run gave %s, the value run %s"
                        i
                        command
                        (shown fromOwned)
                        (shown fromValue)
                )

            if PipeRun.liveSubstreams owned <> PipeRun.liveSubstreams value then
                differences.Add(sprintf "step %d (%A): live substreams differ" i command)

            if sprintf "%A" (PipeRun.held owned) <> sprintf "%A" (PipeRun.held value) then
                differences.Add(sprintf "step %d (%A): held events differ" i command)

    List.ofSeq differences, answered

/// A demux whose key function returns null for 13: the substreams' dictionary then throws inside
/// the interpreter (not user code), as a bug would.
let private nullKeyRun owned =
    let pipe =
        Pipe.source<int>
        |> Pipe.demux (fun v -> if v = 13 then Unchecked.defaultof<string> else string v) (fun sub ->
            sub |> Pipe.aggregate (Buffer.count 2))

    if owned then
        PipeRun.startOwned pipe
    else
        PipeRun.start pipe

let tests =
    testList "PipeRun" [
        test "pushing into an older run leaves the newer one untouched and vice versa" {
            let pipe =
                Pipe.source<int>
                |> Pipe.demux string (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))

            let run0 = PipeRun.start pipe
            let run1, _ = run0 |> PipeRun.push at (message 0L 7)
            let _, fromOld = run0 |> PipeRun.push at (message 1L 7)
            let _, fromNew = run1 |> PipeRun.push at (message 1L 7)
            Expect.isEmpty fromOld.Outputs "the old run had nothing buffered"
            Expect.equal (values fromNew) [ [ 7; 7 ] ] "the new run had 7 buffered"

            Expect.equal
                (PipeRun.liveSubstreams run0, PipeRun.liveSubstreams run1)
                (0, 1)
                "both runs unchanged"
        }
        test "a push that only takes a hold id is a version of its own; older and newer runs both stay valid" {
            let pipe =
                Pipe.source<int>
                |> Pipe.demux string (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))

            let run0 = PipeRun.start pipe
            // A tick with no substream writes nothing to the store: only the run's hold counter moves.
            let run1, _ = run0 |> PipeRun.push at Tick
            let run2, _ = run1 |> PipeRun.push at (message 0L 7)
            let _, fromOld = run1 |> PipeRun.push at (message 1L 7)
            let _, fromNew = run2 |> PipeRun.push at (message 1L 7)
            let _, fromFirst = run0 |> PipeRun.push at (message 1L 7)
            Expect.isEmpty fromOld.Outputs "the run after the tick had nothing buffered"
            Expect.isEmpty fromFirst.Outputs "the first run had nothing buffered"
            Expect.equal (values fromNew) [ [ 7; 7 ] ] "the newest run had 7 buffered"

            Expect.equal
                (PipeRun.liveSubstreams run0, PipeRun.liveSubstreams run1, PipeRun.liveSubstreams run2)
                (0, 0, 1)
                "every run unchanged"
        }
        test "two threads pushing into two versions of one run each get what a fresh run gives" {
            let pipe =
                Pipe.source<int>
                |> Pipe.demux (fun v -> string (v % 7)) (fun sub -> sub |> Pipe.aggregate (Buffer.count 3))

            let pushAll (inputs: int list) run =
                ((run, []), inputs)
                ||> List.fold (fun (run, outputs) v ->
                    let run, effects = PipeRun.push at (message (int64 v) v) run
                    run, List.rev (values effects) @ outputs)
                |> snd
                |> List.rev

            let run0 = PipeRun.start pipe
            let run1, _ = run0 |> PipeRun.push at (message 0L 0)
            let odd = [ for v in 1..2..10_001 -> v ]
            let even = [ for v in 2..2..10_002 -> v ]

            // Both threads start together, so their pushes interleave.
            use together = new Threading.Barrier(2)

            let onThread inputs run =
                Threading.Tasks.Task.Factory.StartNew(
                    (fun () ->
                        together.SignalAndWait()
                        pushAll inputs run),
                    Threading.Tasks.TaskCreationOptions.LongRunning
                )

            let fromOld, fromNew =
                Threading.Tasks.Task.WhenAll(onThread odd run0, onThread even run1)
                |> fun t -> t.Result[0], t.Result[1]

            Expect.equal fromOld (pushAll odd (PipeRun.start pipe)) "the older version, as a fresh run"

            Expect.equal
                fromNew
                (PipeRun.start pipe |> PipeRun.push at (message 0L 0) |> fst |> pushAll even)
                "the newer version, as a fresh run"
        }
        test "a flush reaches each stage after what the stages before it emitted on that flush" {
            let pipe =
                Pipe.source<int>
                |> Pipe.aggregate (Buffer.count 10)
                |> Pipe.map List.sum
                |> Pipe.aggregate (Buffer.count 10)

            let run, _ = PipeRun.start pipe |> PipeRun.push at (message 0L 1)
            let run, _ = run |> PipeRun.push at (message 1L 2)
            let _, flushed = run |> PipeRun.push at Flush

            Expect.equal
                (values flushed)
                [ [ 3 ] ]
                "the first buffer's sum reached the second before it flushed"

            Expect.equal
                (flushed.Outputs
                 |> List.collect (fun e -> e.Tokens)
                 |> List.map (fun t -> t.Position.Offset))
                [ 0L; 1L ]
                "tokens merged"
        }
        test "a sink request names the demux substream it comes from, outermost key first" {
            let write (_: int) = Threading.Tasks.Task.CompletedTask

            let pipe =
                Pipe.source<int>
                |> Pipe.demux (fun v -> string (v % 2)) (fun sub ->
                    sub
                    |> Pipe.demux (fun v -> string (v % 3)) (fun sub -> sub |> Pipe.sink "inner" write))

            let _, effects = PipeRun.start pipe |> PipeRun.push at (message 0L 5)
            Expect.equal (effects.Sinks |> List.map _.Substream) [ "1\u001f2" ] "both keys, outermost first"

            let flat = Pipe.source<int> |> Pipe.sink "flat" write
            let _, effects = PipeRun.start flat |> PipeRun.push at (message 0L 5)
            Expect.equal (effects.Sinks |> List.map _.Substream) [ "" ] "no demux, no substream"
        }
        test "a flush waits at an async node for its calls, so one flush writes everything once they answer" {
            let d =
                deferredBatches 1 3
                |> TestDriver.feed (Message.create tp 0L "k" 0)
                |> TestDriver.flush

            Expect.isEmpty (TestDriver.written "db" d: int list list) "the call has not answered yet"
            let d = d |> TestDriver.succeedAll
            Expect.equal (TestDriver.written "db" d) [ [ 0 ] ] "written by the one flush"
            Expect.equal (TestDriver.committed tp d) 1L "committed"
            Expect.equal (Ledger.openCount tp (TestDriver.ledger d)) 0 "no offset open"
        }
        test "a revoke waits only for the calls of its partition, in input order" {
            let tp1 = TopicPartition.create "t" 1

            let run, effects =
                (asyncThenBuffer (), noEffects)
                |> step (messageOn tp1 0L 10)
                |> step (messageOn tp 0L 20)
                |> step (Revoked tp1)

            Expect.isEmpty (values effects) "held behind tp1's call"
            Expect.equal (PipeRun.held run) [ Revoked tp1 ] "held"
            let run, effects = (run, effects) |> answer 1
            Expect.equal (values effects) [ [ 1 ] ] "tp1's result, then the revoke flushed the buffer"
            Expect.isEmpty (PipeRun.held run) "nothing held while tp's call is still in flight"
            let _, effects = (run, effects) |> step (Revoked(TopicPartition.create "t" 9))
            Expect.isEmpty (values effects) "a revoke with no call of its partition passes at once"
        }
        test "a failed call lets the held flush go on; its input stays unfinished" {
            let d =
                deferredBatches 2 10
                |> TestDriver.feedAll [ Message.create tp 0L "k" 0; Message.create tp 1L "k" 1 ]
                |> TestDriver.flush
                |> TestDriver.failAsync 1 "timeout"
                |> TestDriver.runAsync 2

            Expect.equal (TestDriver.written "db" d) [ [ 1 ] ] "1 went on, then the flush"
            Expect.equal (TestDriver.committed tp d) 0L "offset 0 stays open"
            Expect.equal (TestDriver.failures d |> List.map _.Stage) [ "mapAsync" ] "reported"
        }
        test "a flush held in a substream reaches the stages after the join once no substream holds it" {
            let d =
                Pipe.source<int>
                |> Pipe.demux (fun v -> string (v % 2)) (fun sub ->
                    sub |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult)
                |> Pipe.aggregate (Buffer.count 10)
                |> TestDriver.create deferred
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ Message.create tp 0L "k" 1; Message.create tp 1L "k" 2 ]
                |> TestDriver.flush
                |> TestDriver.runAsync 2

            Expect.isEmpty (TestDriver.outputs d) "substream 1 still holds the flush"
            Expect.equal (TestDriver.liveSubstreams d) 2 "busy at the flush, so kept"
            let d = d |> TestDriver.runAsync 1

            Expect.equal
                (TestDriver.outputs d |> List.map (fun e -> e.Value))
                [ [ 2; 1 ] ]
                "both results, then the flush"

            Expect.equal (TestDriver.committed tp d) 2L "committed"
            let d = d |> TestDriver.advance Pipe.demuxOptions.IdleAfter
            Expect.equal (TestDriver.liveSubstreams d) 0 "dropped once idle"
        }
        test "an Assigned keeps its place behind a held revoke; a Tick is never held" {
            let run, _ =
                (asyncThenBuffer (), noEffects)
                |> step (messageOn tp 0L 1)
                |> step (Revoked tp)
                |> step (Assigned tp)
                |> step Tick

            Expect.equal (PipeRun.held run) [ Revoked tp; Assigned tp ] "in order"
            let run, effects = (run, noEffects) |> answer 1
            Expect.equal (values effects) [ [ 1 ] ] "released in order"
            Expect.isEmpty (PipeRun.held run) "none left"
        }
        test "a stage failing after an aggregate reports every token of the batch, in order" {
            let d = failingBatch ()

            let failure = TestDriver.failures d |> List.exactlyOne

            Expect.equal
                (failure.Stage, failure.Position, StageFailure.positions failure)
                ("map", ValueSome(Position.create tp 3L), [ for o in 3L .. 5L -> Position.create tp o ])
                "the whole batch"

            Expect.equal failure.Tokens.Length 3 "one token per message"
            Expect.equal (TestDriver.committed tp d) 3L "the batch stays open"
        }
        test
            "completing a failed batch's tokens (as a runtime does once it dead-lettered them) lets the commit point pass it" {
            let d = failingBatch ()

            let ledger =
                (TestDriver.ledger d, (TestDriver.failures d |> List.exactlyOne).Tokens)
                ||> List.fold (fun l t -> Ledger.complete t l |> Result.defaultWith (failwithf "%A"))

            Expect.equal (Ledger.commitPoint tp ledger) (ValueSome 9L) "every offset finished"
        }
        test "a deferred call failing after an aggregate reports every token of its input" {
            let d =
                Pipe.source<int>
                |> Pipe.aggregate (Buffer.count 2)
                |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult
                |> TestDriver.create deferred
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 3L -> Message.create tp o "k" (int o) ]
                |> TestDriver.failAsync 1 "timeout"
                |> TestDriver.runAsync 2

            Expect.equal
                (TestDriver.failures d |> List.map StageFailure.positions)
                [ [ Position.create tp 0L; Position.create tp 1L ] ]
                "both messages of the first batch"

            Expect.equal (TestDriver.committed tp d) 0L "open"
        }
        test "a failure after an unfold holds the forked part's token; its message is listed once" {
            let d =
                Pipe.source<int>
                |> Pipe.unfold (fun x -> [ x; x ])
                |> Pipe.aggregate (Buffer.count 2)
                |> Pipe.map (fun (batch: int list) ->
                    if List.contains 1 batch then failwith "poison" else batch)
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 2L -> Message.create tp o "k" (int o) ]

            let failure = TestDriver.failures d |> List.exactlyOne
            Expect.equal failure.Tokens.Length 2 "two parts of offset 1"
            Expect.equal (StageFailure.positions failure) [ Position.create tp 1L ] "offset 1 once"
        }
        test "a stage failing on a tick reports no token" {
            let d =
                Pipe.source<int>
                |> Pipe.via (
                    Stage.create "clock" () (fun _ event () ->
                        match event with
                        | Tick -> failwith "tick"
                        | Message e -> (), Output.emit e
                        | _ -> (), Output.none)
                )
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.advance (TimeSpan.FromSeconds 1.)

            let failure = TestDriver.failures d |> List.exactlyOne
            Expect.equal (failure.Position, failure.Tokens) (ValueNone, []) "no message"
        }
        test "a push into a run from inside one of its own steps is refused, as a failure of that step" {
            let mutable self = Unchecked.defaultof<PipeRun>

            let reentrant =
                Pipe.source<int>
                |> Pipe.stateful "reentrant" 0 (fun _ event n ->
                    match event with
                    | Message _ ->
                        self |> PipeRun.push at Tick |> ignore
                        n + 1, Output.none
                    | _ -> n, Output.none)

            self <- PipeRun.start reentrant
            let _, effects = self |> PipeRun.push at (message 0L 1)

            Expect.equal
                (effects.Failures |> List.map (fun f -> f.Stage, f.Error.GetType()))
                [ "reentrant", typeof<InvalidOperationException> ]
                "the inner push is refused"
        }
        test "resuming a call that is not in flight is refused" {
            let run =
                PipeRun.startWith Defer (Pipe.source<int> |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult)

            Expect.throwsT<ArgumentException>
                (fun () -> run |> PipeRun.resume at 1 (Ok(1 :> obj)) |> ignore)
                "unknown call"
        }
        test "an async node's queue and its calls in flight go back together to an older run" {
            let run0 =
                Pipe.source<int>
                |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult
                |> Pipe.aggregate (Buffer.count 2)
                |> PipeRun.startWith Defer

            let run1, started = run0 |> PipeRun.push at (message 0L 0)
            let first = started.Calls |> List.exactlyOne
            let run2, _ = run1 |> PipeRun.resume at first.Id (Ok(10 :> obj))
            let run3, next = run2 |> PipeRun.push at (message 1L 1)
            let second = next.Calls |> List.exactlyOne

            // Back to run1: its call is in flight again and the buffer empty; run2 has no call in flight.
            let run1', _ = run1 |> PipeRun.resume at first.Id (Ok(20 :> obj))

            Expect.throwsT<ArgumentException>
                (fun () -> run2 |> PipeRun.resume at first.Id (Ok(10 :> obj)) |> ignore)
                "the call ended in run2"

            let run1'', again = run1' |> PipeRun.push at (message 1L 1)

            let _, fromOld =
                run1'' |> PipeRun.resume at (List.exactlyOne again.Calls).Id (Ok(21 :> obj))

            let _, fromNew = run3 |> PipeRun.resume at second.Id (Ok(30 :> obj))
            Expect.equal (values fromOld) [ [ 20; 21 ] ] "the older run's answers"
            Expect.equal (values fromNew) [ [ 10; 30 ] ] "the newer run's answers"
        }
        testPropertyWithConfig
            PipeScenario.config
            "an owned run gives the same effects in the same order as a value run fed the same pushes and answers"
        <| Prop.forAll (Arb.fromGenShrink (genOwnedCase, shrinkOwnedCase)) (fun c ->
            let differences, answered = ownedAgainstValue c

            PipeScenario.verdict differences
            |> Prop.classify c.Deferred "deferred calls"
            |> Prop.classify (answered > 0) "calls answered"
            |> Prop.classify
                (match c.Pipe.Tail with
                 | PipeSpec.Plain _ -> false
                 | _ -> true)
                "demux")
        test "an owned run refuses push and resume" {
            let run =
                Pipe.source<int>
                |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult
                |> PipeRun.startOwnedWith Defer

            let started = run |> PipeRun.pushOwned at (message 0L 1)
            let call = List.exactlyOne started.Calls

            Expect.throwsT<InvalidOperationException>
                (fun () -> run |> PipeRun.push at (message 1L 2) |> ignore)
                "push refuses an owned run"

            Expect.throwsT<InvalidOperationException>
                (fun () -> run |> PipeRun.push at Tick |> ignore)
                "push of a broadcast refuses an owned run"

            Expect.throwsT<InvalidOperationException>
                (fun () -> run |> PipeRun.resume at call.Id (Ok(1 :> obj)) |> ignore)
                "resume refuses an owned run"

            let resumed = run |> PipeRun.resumeOwned at call.Id (Ok(5 :> obj))

            Expect.equal
                (resumed.Outputs |> List.map (fun e -> unbox<int> e.Value))
                [ 5 ]
                "the owned run still works"

            // A pipe of stateless stages only, which push runs without the store's lock.
            let passing = Pipe.source<int> |> Pipe.map ((+) 1) |> PipeRun.startOwned

            Expect.throwsT<InvalidOperationException>
                (fun () -> passing |> PipeRun.push at (message 0L 1) |> ignore)
                "push refuses an owned run of stateless stages"
        }
        test "a value run refuses the owned API" {
            let run =
                Pipe.source<int>
                |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult
                |> PipeRun.startWith Defer

            let run, started = run |> PipeRun.push at (message 0L 1)
            let call = List.exactlyOne started.Calls

            Expect.throwsT<InvalidOperationException>
                (fun () -> run |> PipeRun.pushOwned at (message 1L 2) |> ignore)
                "pushOwned refuses a value run"

            Expect.throwsT<InvalidOperationException>
                (fun () ->
                    let m = Message.create tp 1L "1" 2

                    run
                    |> PipeRun.pushMessageOwned
                        at
                        (Envelope.box (Envelope.ofMessage { Position = m.Position; Epoch = 1 } m))
                    |> ignore)
                "pushMessageOwned refuses a value run"

            Expect.throwsT<InvalidOperationException>
                (fun () -> run |> PipeRun.resumeOwned at call.Id (Ok(1 :> obj)) |> ignore)
                "resumeOwned refuses a value run"

            let _, resumed = run |> PipeRun.resume at call.Id (Ok(5 :> obj))

            Expect.equal
                (resumed.Outputs |> List.map (fun e -> unbox<int> e.Value))
                [ 5 ]
                "the value run still works"
        }
        test "an owned run whose push threw half-way is broken and refuses every later use" {
            let run = nullKeyRun true
            run |> PipeRun.pushOwned at (message 0L 1) |> ignore

            Expect.throwsT<ArgumentNullException>
                (fun () -> run |> PipeRun.pushOwned at (message 1L 13) |> ignore)
                "the interpreter's own throw goes through"

            let refused what (f: unit -> unit) =
                let ex = Expect.throwsC f id
                Expect.isTrue (ex :? InvalidOperationException) $"{what} raises InvalidOperationException"
                Expect.stringContains ex.Message "broken" $"{what} says the run is broken"

            refused "pushOwned" (fun () -> run |> PipeRun.pushOwned at (message 2L 2) |> ignore)
            refused "pushOwned of a Tick" (fun () -> run |> PipeRun.pushOwned at Tick |> ignore)
            refused "resumeOwned" (fun () -> run |> PipeRun.resumeOwned at 1 (Ok(1 :> obj)) |> ignore)
            refused "liveSubstreams" (fun () -> PipeRun.liveSubstreams run |> ignore)
            refused "held" (fun () -> PipeRun.held run |> ignore)
        }
        test "a value run whose push threw half-way is left as it was" {
            let run, _ = nullKeyRun false |> PipeRun.push at (message 0L 1)

            Expect.throwsT<ArgumentNullException>
                (fun () -> run |> PipeRun.push at (message 1L 13) |> ignore)
                "the interpreter's own throw goes through"

            let _, effects = run |> PipeRun.push at (message 2L 1)
            Expect.equal (values effects) [ [ 1; 1 ] ] "the run goes on from before the throw"
        }
        test "an owned run refuses an unknown call and stays usable" {
            let run =
                Pipe.source<int>
                |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult
                |> PipeRun.startOwnedWith Defer

            let started = run |> PipeRun.pushOwned at (message 0L 1)
            let call = List.exactlyOne started.Calls

            Expect.throwsT<ArgumentException>
                (fun () -> run |> PipeRun.resumeOwned at (call.Id + 1) (Ok(1 :> obj)) |> ignore)
                "an unknown call is refused"

            let resumed = run |> PipeRun.resumeOwned at call.Id (Ok(5 :> obj))

            Expect.equal
                (resumed.Outputs |> List.map (fun e -> unbox<int> e.Value))
                [ 5 ]
                "the known call still resumes"
        }
        test "a step pushing its own owned run is reported as a failure and the run stays usable" {
            let mutable self = Unchecked.defaultof<PipeRun>

            let nesting =
                Stage.create "nesting" () (fun _ event () ->
                    match event with
                    | Message e when e.Value = 1 ->
                        self |> PipeRun.pushOwned at (message 9L 9) |> ignore
                        (), Output.emit e
                    | Message e -> (), Output.emit e
                    | _ -> (), Output.none)

            self <- Pipe.source<int> |> Pipe.via nesting |> PipeRun.startOwned
            let first = self |> PipeRun.pushOwned at (message 0L 1)

            Expect.equal
                (first.Failures |> List.map (fun f -> f.Stage))
                [ "nesting" ]
                "the nested push failed the step"

            let second = self |> PipeRun.pushOwned at (message 1L 2)
            Expect.equal (second.Outputs |> List.map (fun e -> unbox<int> e.Value)) [ 2 ] "the run goes on"
        }
    ]
