// The test driver's state and how it records what a push produced: ledger effects, finished outputs,
// sink writes (answered at once in Automatic mode) and deferred async calls, and stored commit points.
namespace KFlow

open System
open System.Threading.Tasks

/// The driver's state; lists are newest first.
[<NoEquality; NoComparison>]
type internal DriverState<'i, 'o> = {
    Options: DriverOptions
    Pipe: Pipe<'i, 'o>
    Run: PipeRun
    Ledger: Ledger
    Now: DateTimeOffset
    /// The next offset to read of every assigned partition.
    Next: Map<TopicPartition, int64>
    Committed: Map<TopicPartition, int64>
    History: Commit list
    Calls: Map<int, SinkCall>
    /// The write of every Pending sink call.
    Writes: Map<int, obj -> Task>
    AsyncCalls: Map<int, AsyncCall>
    NextSink: int
    NextAsync: int
    /// The run's own id and the function of every Pending async call.
    AsyncRuns: Map<int, int * (obj -> Task<obj>)>
    Outputs: Envelope<obj> list
    Failures: StageFailure list
    Refused: LedgerError list
    Inputs: Message<'i> list
    Seen: Set<Position>
}

/// Recording into the driver's state.
[<RequireQualifiedAccess>]
module internal DriverState =
    /// The state of a fresh driver: nothing assigned, fed, requested or committed.
    let create (options: DriverOptions) (pipe: Pipe<'i, 'o>) = {
        Options = options
        Pipe = pipe
        Run = PipeRun.startWith options.AsyncMode pipe
        Ledger = Ledger.empty
        Now = options.Start
        Next = Map.empty
        Committed = Map.empty
        History = []
        Calls = Map.empty
        Writes = Map.empty
        AsyncCalls = Map.empty
        NextSink = 1
        NextAsync = 1
        AsyncRuns = Map.empty
        Outputs = []
        Failures = []
        Refused = []
        Inputs = []
        Seen = Set.empty
    }

    /// Applies ledger operations in order; refusals are returned (in order), not thrown.
    let private applyAll (operation: 'x -> Ledger -> Result<Ledger, LedgerError>) (xs: 'x list) ledger =
        ((ledger, []), xs)
        ||> List.fold (fun (l, refused) x ->
            match operation x l with
            | Ok l' -> l', refused
            | Error e -> l, e :: refused)
        |> fun (l, refused) -> l, List.rev refused

    /// Completes tokens one part each; refusals are returned, not thrown.
    let completeAll (tokens: Token list) (ledger: Ledger) = applyAll Ledger.complete tokens ledger

    /// Stores the ledger's commit point of every partition whose point moved, with its epoch.
    let storeCommits (s: DriverState<'i, 'o>) =
        (s, Ledger.commitPoints s.Ledger)
        ||> List.fold (fun s (tp, offset) ->
            match Map.tryFind tp s.Committed with
            | Some c when c = offset -> s
            | _ ->
                let epoch = Ledger.epoch tp s.Ledger |> ValueOption.defaultValue 0

                {
                    s with
                        Committed = Map.add tp offset s.Committed
                        History =
                            {
                                TopicPartition = tp
                                Offset = offset
                                Epoch = epoch
                            }
                            :: s.History
                })

    /// Stores the commit points if the options say so after every operation.
    let autoCommit (s: DriverState<'i, 'o>) =
        if s.Options.AutoCommit then storeCommits s else s

    /// Runs a Pending write; on success completes its tokens.
    let execute (id: int) (s: DriverState<'i, 'o>) =
        let call = s.Calls[id]
        let write = s.Writes[id]

        let s = {
            s with
                Writes = Map.remove id s.Writes
        }

        match attempt (fun () -> (write call.Value).GetAwaiter().GetResult()) with
        | Ok() ->
            let ledger, refused = completeAll call.Tokens s.Ledger

            {
                s with
                    Ledger = ledger
                    Refused = List.rev refused @ s.Refused
                    Calls =
                        Map.add
                            id
                            {
                                call with
                                    Status = Succeeded
                                    Refused = refused
                            }
                            s.Calls
            }
        | Error ex -> {
            s with
                Calls = Map.add id { call with Status = Failed ex.Message } s.Calls
          }

    /// Records a sink request as Pending call `id`, and runs it at once in Automatic mode.
    let private requestWrite (s: DriverState<'i, 'o>) (id, request: SinkRequest) =
        let s = {
            s with
                Calls =
                    Map.add
                        id
                        {
                            Id = id
                            Sink = request.Sink
                            Value = request.Envelope.Value
                            Tokens = request.Envelope.Tokens
                            Status = Pending
                            Refused = []
                        }
                        s.Calls
                Writes = Map.add id request.Write s.Writes
        }

        match s.Options.SinkMode with
        | Automatic -> execute id s
        | Manual -> s

    /// Records a deferred async request as Pending call `id`.
    let private requestCall (s: DriverState<'i, 'o>) (id, request: AsyncRequest) = {
        s with
            AsyncCalls =
                Map.add
                    id
                    {
                        Id = id
                        Stage = request.Stage
                        Input = request.Envelope.Value
                        Tokens = request.Envelope.Tokens
                        Status = Pending
                    }
                    s.AsyncCalls
            AsyncRuns = Map.add id (request.Id, request.Run) s.AsyncRuns
    }

    /// Requests numbered in order from `first`.
    let private numbered first (requests: 'r list) =
        requests |> List.mapi (fun j r -> first + j, r)

    /// Applies what one push produced: ledger effects, finished outputs, failures, sink requests
    /// and async calls; then stores the commit points if AutoCommit.
    let apply (effects: Effects) (s: DriverState<'i, 'o>) =
        let operation effect =
            match effect with
            | Complete t -> Ledger.complete t
            | Fork(t, n) -> Ledger.fork n t

        let ledger, refused = applyAll operation effects.Ledger s.Ledger

        let ledger, outRefused =
            completeAll (effects.Outputs |> List.collect (fun e -> e.Tokens)) ledger

        let writes = numbered s.NextSink effects.Sinks
        let calls = numbered s.NextAsync effects.Calls

        let s = {
            s with
                Ledger = ledger
                Refused = List.rev outRefused @ List.rev refused @ s.Refused
                Outputs = List.rev effects.Outputs @ s.Outputs
                Failures = List.rev effects.Failures @ s.Failures
                NextSink = s.NextSink + writes.Length
                NextAsync = s.NextAsync + calls.Length
        }

        let s = writes |> List.fold requestWrite s
        calls |> List.fold requestCall s |> autoCommit

    /// After a crash: every stage back to its initial state, Pending writes and calls Abandoned.
    let restart (s: DriverState<'i, 'o>) =
        let abandon status =
            if status = Pending then Abandoned else status

        {
            s with
                Run = PipeRun.startWith s.Options.AsyncMode s.Pipe
                Calls = s.Calls |> Map.map (fun _ c -> { c with Status = abandon c.Status })
                Writes = Map.empty
                AsyncCalls = s.AsyncCalls |> Map.map (fun _ c -> { c with Status = abandon c.Status })
                AsyncRuns = Map.empty
        }
