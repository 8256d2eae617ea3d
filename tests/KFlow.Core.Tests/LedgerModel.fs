// The ledger's reference model and the command runner of its model-based tests: the obvious Map
// implementation, and a runner that applies generated commands to both and reports each outcome.
module KFlow.Core.Tests.LedgerModel

open KFlow

/// The reference model: the obvious implementation, a Map of open offsets to open parts.
module Model =
    type Partition = {
        Epoch: int
        NextAtLeast: int64
        Open: Map<int64, int>
    }

    type T = {
        Partitions: Map<TopicPartition, Partition>
        NextEpoch: int
    }

    let empty = {
        Partitions = Map.empty
        NextEpoch = 1
    }

    let assign tp start m = {
        Partitions =
            Map.add
                tp
                {
                    Epoch = m.NextEpoch
                    NextAtLeast = start
                    Open = Map.empty
                }
                m.Partitions
        NextEpoch = m.NextEpoch + 1
    }

    let revoke tp m = {
        m with
            Partitions = Map.remove tp m.Partitions
    }

    let deliver (position: Position) m =
        let tp = position.TopicPartition

        match Map.tryFind tp m.Partitions with
        | None -> Error(NotAssigned tp)
        | Some p when position.Offset < p.NextAtLeast -> Error(OutOfOrder(position, p.NextAtLeast))
        | Some p ->
            let p' = {
                p with
                    NextAtLeast = position.Offset + 1L
                    Open = Map.add position.Offset 1 p.Open
            }

            Ok(
                {
                    m with
                        Partitions = Map.add tp p' m.Partitions
                },
                { Position = position; Epoch = p.Epoch }
            )

    let private change (token: Token) m f =
        let tp = token.Position.TopicPartition

        match Map.tryFind tp m.Partitions with
        | None -> Error(NotAssigned tp)
        | Some p when p.Epoch <> token.Epoch -> Error(StaleEpoch(token, p.Epoch))
        | Some p ->
            match Map.tryFind token.Position.Offset p.Open with
            | None -> Error(NotOpen token)
            | Some parts ->
                let open' =
                    match f parts with
                    | 0 -> Map.remove token.Position.Offset p.Open
                    | n -> Map.add token.Position.Offset n p.Open

                Ok {
                    m with
                        Partitions = Map.add tp { p with Open = open' } m.Partitions
                }

    let fork parts token m =
        if parts < 0 then
            Error(InvalidParts(token, parts))
        else
            change token m (fun n -> n - 1 + parts)

    let complete token m = change token m (fun n -> n - 1)

    let commitPoint tp m =
        Map.tryFind tp m.Partitions
        |> Option.map (fun p ->
            if Map.isEmpty p.Open then
                p.NextAtLeast
            else
                Map.minKeyValue p.Open |> fst)

    let nextAtLeast tp m =
        Map.tryFind tp m.Partitions
        |> Option.map _.NextAtLeast
        |> Option.defaultValue 0L

/// What can be observed of a ledger, for comparison with the model.
type Observation = {
    CommitPoints: (TopicPartition * int64) list
    Assigned: TopicPartition list
    PerPartition: (TopicPartition * int option * int64 option * int * (int64 * int) list) list
}

let observe (ledger: Ledger) = {
    CommitPoints = Ledger.commitPoints ledger
    Assigned = Ledger.assigned ledger
    PerPartition = [
        for tp in Generators.partitions ->
            tp,
            Ledger.epoch tp ledger |> ValueOption.toOption,
            Ledger.commitPoint tp ledger |> ValueOption.toOption,
            Ledger.openCount tp ledger,
            Ledger.openOffsets tp ledger
    ]
}

let observeModel (m: Model.T) = {
    CommitPoints =
        m.Partitions
        |> Map.toList
        |> List.map (fun (tp, _) -> tp, (Model.commitPoint tp m).Value)
    Assigned = m.Partitions |> Map.toList |> List.map fst
    PerPartition = [
        for tp in Generators.partitions ->
            let p = Map.tryFind tp m.Partitions

            tp,
            p |> Option.map _.Epoch,
            Model.commitPoint tp m,
            p |> Option.map _.Open.Count |> Option.defaultValue 0,
            p |> Option.map (fun p -> Map.toList p.Open) |> Option.defaultValue []
    ]
}

/// Both systems after some commands: the real ledger, the model, and every token issued so far.
[<NoEquality; NoComparison>]
type Run = {
    Ledger: Ledger
    Model: Model.T
    Issued: ResizeArray<Token>
}

/// One comparable result of one ledger call: Ok with the token delivered, if any, or the error.
type Outcome = Result<Token option, LedgerError>

let private deliverBoth (tp: TopicPartition) (gap: int64) (ledger: Ledger, model: Model.T) =
    let position = Position.create tp (max 0L (Model.nextAtLeast tp model + gap))

    let model', expected =
        match Model.deliver position model with
        | Ok(model', token) -> model', (Ok(Some token): Outcome)
        | Error e -> model, Error e

    match Ledger.deliver position ledger with
    | Ok(struct (ledger', token)) -> struct (ledger', model', [ Ok(Some token), expected ])
    | Error e -> struct (ledger, model', [ Error e, expected ])

/// Applies one command to both systems; returns the outcomes (real, model) of each ledger call.
let step (run: Run) (command: Command) : Run * (Outcome * Outcome) list =
    let tpOf i = Generators.partitions.[i]

    let pickToken pick =
        if run.Issued.Count = 0 then
            None
        else
            Some run.Issued.[pick % run.Issued.Count]

    let onToken (real: Result<Ledger, LedgerError>) (model: Result<Model.T, LedgerError>) =
        let outcome (r: Result<_, LedgerError>) : Outcome = r |> Result.map (fun _ -> None)

        let ledger' = real |> Result.defaultValue run.Ledger
        let model' = model |> Result.defaultValue run.Model

        {
            run with
                Ledger = ledger'
                Model = model'
        },
        [ outcome real, outcome model ]

    match command with
    | Assign(p, start) ->
        {
            run with
                Ledger = Ledger.assign (tpOf p) start run.Ledger
                Model = Model.assign (tpOf p) start run.Model
        },
        []
    | Revoke p ->
        {
            run with
                Ledger = Ledger.revoke (tpOf p) run.Ledger
                Model = Model.revoke (tpOf p) run.Model
        },
        []
    | Deliver(p, gap) ->
        let struct (l, m, outcomes) = deliverBoth (tpOf p) gap (run.Ledger, run.Model)

        for real, _ in outcomes do
            match real with
            | Ok(Some token) -> run.Issued.Add token
            | _ -> ()

        { run with Ledger = l; Model = m }, outcomes
    | DeliverRun(p, count, stride) ->
        let mutable state = (run.Ledger, run.Model)
        let all = ResizeArray()

        for i in 0 .. count - 1 do
            let struct (l, m, outcomes) =
                deliverBoth (tpOf p) (if i = 0 then 0L else stride - 1L) state

            state <- (l, m)
            all.AddRange outcomes

            for real, _ in outcomes do
                match real with
                | Ok(Some token) -> run.Issued.Add token
                | _ -> ()

        {
            run with
                Ledger = fst state
                Model = snd state
        },
        List.ofSeq all
    | Command.Complete pick ->
        match pickToken pick with
        | None -> run, []
        | Some token -> onToken (Ledger.complete token run.Ledger) (Model.complete token run.Model)
    | Command.Fork(pick, parts) ->
        match pickToken pick with
        | None -> run, []
        | Some token -> onToken (Ledger.fork parts token run.Ledger) (Model.fork parts token run.Model)
    | CompleteShifted(pick, shift) ->
        match pickToken pick with
        | None -> run, []
        | Some issued ->
            let token = {
                issued with
                    Position =
                        Position.create
                            issued.Position.TopicPartition
                            (max 0L (issued.Position.Offset + shift))
            }

            onToken (Ledger.complete token run.Ledger) (Model.complete token run.Model)
    | CompleteForged(p, offset, epoch) ->
        let token = {
            Position = Position.create (tpOf p) offset
            Epoch = epoch
        }

        onToken (Ledger.complete token run.Ledger) (Model.complete token run.Model)

let start () = {
    Ledger = Ledger.empty
    Model = Model.empty
    Issued = ResizeArray()
}

/// Every run starts with the first partition assigned, so most commands do something.
let prelude = [ Assign(0, 0L) ]

/// Runs the commands, calling `check` with the step number, the command, the run before and after,
/// and the outcomes.
let replay
    (commands: Command list)
    (check: int -> Command -> Run -> Run -> (Outcome * Outcome) list -> unit)
    =
    (start (), List.indexed (prelude @ commands))
    ||> List.fold (fun run (i, command) ->
        let run', outcomes = step run command
        check i command run run' outcomes
        run')
    |> ignore
