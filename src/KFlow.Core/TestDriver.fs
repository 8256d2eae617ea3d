// The test driver: runs a pipe deterministically in memory through PipeRun, keeps the ledger and the
// stored commit points, answers sink writes, and records everything a test may assert on.
namespace KFlow

open System

[<Sealed; NoEquality; NoComparison>]
type TestDriver<'i, 'o> internal (state: DriverState<'i, 'o>) =
    member internal _.State = state

[<RequireQualifiedAccess>]
module TestDriver =
    let options = {
        SinkMode = Automatic
        AutoCommit = true
        Start = DateTimeOffset.UnixEpoch
        AsyncMode = RunInline
    }

    let create (options: DriverOptions) (pipe: Pipe<'i, 'o>) =
        TestDriver<'i, 'o>(DriverState.create options pipe)

    let start pipe = create options pipe

    let private push (event: Event<obj>) (s: DriverState<'i, 'o>) =
        let run, effects = PipeRun.push s.Now event s.Run
        DriverState.apply effects { s with Run = run }

    let private lift f (driver: TestDriver<'i, 'o>) = TestDriver<'i, 'o>(f driver.State)

    let private assignState tp (s: DriverState<'i, 'o>) =
        let from = Map.tryFind tp s.Committed |> Option.defaultValue 0L

        {
            s with
                Ledger = Ledger.assign tp from s.Ledger
                Next = Map.add tp from s.Next
        }
        |> push (Assigned tp)

    let assign tp driver =
        driver
        |> lift (fun s -> if Map.containsKey tp s.Next then s else assignState tp s)

    let revoke tp driver =
        driver
        |> lift (fun s ->
            if not (Map.containsKey tp s.Next) then
                s
            else
                let s = push (Revoked tp) s |> DriverState.storeCommits

                {
                    s with
                        Ledger = Ledger.revoke tp s.Ledger
                        Next = Map.remove tp s.Next
                })

    let private feedState (message: Message<'i>) (s: DriverState<'i, 'o>) =
        let tp = message.Position.TopicPartition

        match Map.tryFind tp s.Next with
        | None -> invalidArgWith "message" (sprintf "%O is not assigned; call TestDriver.assign first." tp)
        | Some next when message.Position.Offset < next ->
            invalidArgWith
                "message"
                (sprintf
                    "Offset %d of %O is below the next offset to read (%d); feed offsets in increasing order."
                    message.Position.Offset
                    tp
                    next)
        | Some _ ->
            match Ledger.deliver message.Position s.Ledger with
            | Error e -> invalidArgWith "message" (sprintf "The ledger refused %O: %A" message.Position e)
            | Ok(struct (ledger, token)) ->
                let seen = s.Seen.Contains message.Position

                {
                    s with
                        Ledger = ledger
                        Next = Map.add tp (message.Position.Offset + 1L) s.Next
                        Inputs = (if seen then s.Inputs else message :: s.Inputs)
                        Seen = s.Seen.Add message.Position
                }
                |> push (Message(Envelope.box (Envelope.ofMessage token message)))

    let feed message driver = driver |> lift (feedState message)

    let feedAll messages driver =
        (driver, messages) ||> List.fold (fun d m -> feed m d)

    let advance (by: TimeSpan) driver =
        if by < TimeSpan.Zero then
            invalidArgWith "by" "The virtual clock only moves forward; pass a TimeSpan ≥ 0."

        driver |> lift (fun s -> push Tick { s with Now = s.Now + by })

    let private pendingCall callId (s: DriverState<'i, 'o>) =
        match Map.tryFind callId s.Calls with
        | Some c when c.Status = Pending -> c
        | Some c -> invalidArgWith "callId" (sprintf "Sink call %d is %A, not Pending." callId c.Status)
        | None -> invalidArgWith "callId" (sprintf "There is no sink call %d." callId)

    let succeed callId driver =
        driver
        |> lift (fun s ->
            pendingCall callId s |> ignore
            DriverState.execute callId s |> DriverState.autoCommit)

    let fail callId (reason: string) driver =
        driver
        |> lift (fun s ->
            let call = pendingCall callId s

            {
                s with
                    Calls = Map.add callId { call with Status = Failed reason } s.Calls
                    Writes = Map.remove callId s.Writes
            })

    let private pendingAsync callId (s: DriverState<'i, 'o>) =
        match Map.tryFind callId s.AsyncCalls, Map.tryFind callId s.AsyncRuns with
        | Some c, Some run when c.Status = Pending -> c, run
        | Some c, _ -> invalidArgWith "callId" (sprintf "Async call %d is %A, not Pending." callId c.Status)
        | None, _ -> invalidArgWith "callId" (sprintf "There is no async call %d." callId)

    let private resume callId (status: SinkStatus) result (s: DriverState<'i, 'o>) =
        let call, (runId, _) = pendingAsync callId s
        let run, effects = PipeRun.resume s.Now runId result s.Run

        {
            s with
                Run = run
                AsyncCalls = Map.add callId { call with Status = status } s.AsyncCalls
                AsyncRuns = Map.remove callId s.AsyncRuns
        }
        |> DriverState.apply effects

    let runAsync callId driver =
        driver
        |> lift (fun s ->
            let call, (_, run) = pendingAsync callId s

            match attempt (fun () -> (run call.Input).GetAwaiter().GetResult()) with
            | Ok value -> resume callId Succeeded (Ok value) s
            | Error ex -> resume callId (Failed ex.Message) (Error ex) s)

    let failAsync callId (reason: string) driver =
        driver |> lift (resume callId (Failed reason) (Error(exn reason)))

    let rec succeedAll (driver: TestDriver<'i, 'o>) =
        // Only Pending calls have an entry in AsyncRuns / Writes; the smallest key is the oldest.
        match Seq.tryHead (Map.keys driver.State.AsyncRuns), Seq.tryHead (Map.keys driver.State.Writes) with
        | Some id, _ -> runAsync id driver |> succeedAll
        | None, Some id -> succeed id driver |> succeedAll
        | None, None -> driver

    let commit driver = driver |> lift DriverState.storeCommits

    let crash driver =
        driver
        |> lift (fun s ->
            let s = DriverState.restart s
            (s, Map.keys s.Next |> List.ofSeq) ||> List.fold (fun s tp -> assignState tp s))

    let replay driver =
        driver
        |> lift (fun s ->
            (s, List.rev s.Inputs)
            ||> List.fold (fun s m ->
                match Map.tryFind m.Position.TopicPartition s.Next with
                | Some next when m.Position.Offset >= next -> feedState m s
                | _ -> s))

    let flush driver =
        driver |> lift (push Flush >> DriverState.storeCommits)

    let now (driver: TestDriver<'i, 'o>) = driver.State.Now

    let outputs (driver: TestDriver<'i, 'o>) : Envelope<'o> list =
        driver.State.Outputs |> List.rev |> List.map Envelope.unbox<'o>

    let sinkCalls (driver: TestDriver<'i, 'o>) =
        driver.State.Calls |> Map.values |> List.ofSeq

    let asyncCalls (driver: TestDriver<'i, 'o>) =
        driver.State.AsyncCalls |> Map.values |> List.ofSeq

    let pending (driver: TestDriver<'i, 'o>) =
        sinkCalls driver |> List.filter (fun c -> c.Status = Pending)

    let written (sink: string) (driver: TestDriver<'i, 'o>) : 'v list =
        sinkCalls driver
        |> List.filter (fun c -> c.Sink = sink && c.Status = Succeeded)
        |> List.map (fun c -> unbox<'v> c.Value)

    let committed tp (driver: TestDriver<'i, 'o>) =
        Map.tryFind tp driver.State.Committed |> Option.defaultValue 0L

    let commitPoints (driver: TestDriver<'i, 'o>) = driver.State.Committed
    let commitHistory (driver: TestDriver<'i, 'o>) = List.rev driver.State.History
    let ledger (driver: TestDriver<'i, 'o>) = driver.State.Ledger

    let assigned (driver: TestDriver<'i, 'o>) =
        Map.keys driver.State.Next |> List.ofSeq

    let liveSubstreams (driver: TestDriver<'i, 'o>) = PipeRun.liveSubstreams driver.State.Run
    let failures (driver: TestDriver<'i, 'o>) = List.rev driver.State.Failures
    let refused (driver: TestDriver<'i, 'o>) = List.rev driver.State.Refused
    let inputs (driver: TestDriver<'i, 'o>) = List.rev driver.State.Inputs
