// An async facade over the generated bindings (Generated/Reckon.swift).
//
//   let engine = try Engine(modelPath: path, options: EngineOptions())
//   for try await update in engine.solveStream(question: q, options: SolveOptions(maxThinkingMs: 8000)) {
//       switch update { case .event(let e): ...; case .finished(let result): ... }
//   }
//
// Cancelling the consuming Task (the student leaves the screen) cancels the
// solve within one decode step.

import Foundation

/// What a solve streams: its events, then its result.
public enum SolveUpdate: Sendable {
    case event(SolveEvent)
    case finished(SolveResult)
}

/// Forwards events into the stream; a terminated stream stops the solve.
final class StreamListener: SolveListener, @unchecked Sendable {
    private let continuation: AsyncThrowingStream<SolveUpdate, Error>.Continuation

    init(_ continuation: AsyncThrowingStream<SolveUpdate, Error>.Continuation) {
        self.continuation = continuation
    }

    func onEvent(event: SolveEvent) throws -> Bool {
        if case .terminated = continuation.yield(.event(event)) {
            return false
        }
        return true
    }
}

extension Engine {
    /// Solve on a dedicated thread (the call blocks while it decodes),
    /// streaming events and then the result.
    public func solveStream(question: String, options: SolveOptions) -> AsyncThrowingStream<SolveUpdate, Error> {
        AsyncThrowingStream(bufferingPolicy: .unbounded) { continuation in
            let token = CancelToken()
            let listener = StreamListener(continuation)
            continuation.onTermination = { @Sendable _ in token.cancel() }
            let thread = Thread {
                do {
                    let result = try self.solve(question: question, options: options, listener: listener, cancel: token)
                    continuation.yield(.finished(result))
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            thread.stackSize = 8 << 20
            thread.qualityOfService = .userInitiated
            thread.start()
        }
    }

    /// Solve and return the result; `Task` cancellation cancels the solve.
    public func solve(question: String, options: SolveOptions, onEvent: @escaping @Sendable (SolveEvent) -> Void = { _ in }) async throws -> SolveResult {
        var result: SolveResult?
        for try await update in solveStream(question: question, options: options) {
            switch update {
            case .event(let e): onEvent(e)
            case .finished(let r): result = r
            }
        }
        guard let result else { throw CancellationError() }
        return result
    }
}
